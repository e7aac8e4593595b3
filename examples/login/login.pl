#!/usr/bin/perl
# A login page in the application itself, one worker per session: until the
# session has logged in, every page is the login form; a right user name and
# password (checked against an htpasswd file by PSD::Htpasswd) marks the
# session logged in, in its state (so a resumed session stays logged in);
# logout ends the session (the X-PSD-End-Session response header): its state
# is deleted and its id names nothing any more.
#
#   GET  PREFIX/          the form, or "user=NAME count=N" (counting visits)
#   POST PREFIX/login     user=NAME&password=PW: 303 to PREFIX/, or the form with 401
#   POST PREFIX/logout    ends the session
use strict;
use warnings;
use FCGI;
use FindBin;
use lib "$FindBin::Bin/../../clients/perl";
use PSD::State;
use PSD::Htpasswd;

my $users = $ENV{LOGIN_USERS} // "$FindBin::Bin/users.htpasswd";
my $state = PSD::State->new or die "login.pl runs under psd (no PSD_STATE_URL)\n";
my $request = FCGI::Request();

sub form_fields {
    my ($body) = @_;
    my %f;
    for my $pair (split /&/, $body) {
        my ($k, $v) = map { my $s = $_ // ''; $s =~ tr/+/ /; $s =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge; $s } split /=/, $pair, 2;
        $f{$k} = $v;
    }
    return %f;
}

sub html { my ($s) = @_; $s =~ s/&/&amp;/g; $s =~ s/</&lt;/g; $s =~ s/"/&quot;/g; return $s }

sub form {
    my ($status, $problem) = @_;
    my $base = $ENV{SCRIPT_NAME};
    print "Status: $status\r\nContent-Type: text/html; charset=utf-8\r\n\r\n";
    print "<!DOCTYPE html><title>Log in</title><h1>Log in</h1>\n";
    print "<p class=problem>", html($problem), "</p>\n" if $problem;
    print qq{<form method=post action="$base/login"><label>User <input name=user></label>\n},
      qq{<label>Password <input name=password type=password></label> <button>Log in</button></form>\n},
      "<p>login form</p>\n";
}

while ($request->Accept() >= 0) {
    my $body = '';
    read(STDIN, $body, $ENV{CONTENT_LENGTH}) if $ENV{CONTENT_LENGTH};
    my $path   = $ENV{PATH_INFO} || '/';
    my $method = $ENV{REQUEST_METHOD};
    my $user   = $state->get('user');
    if ($method eq 'POST' && $path eq '/login') {
        my %f = form_fields($body);
        if (PSD::Htpasswd::check($users, $f{user}, $f{password})) {
            $state->put('user', $f{user});
            print "Status: 303 See Other\r\nLocation: $ENV{SCRIPT_NAME}/\r\n\r\n";
        } else {
            print STDERR "login.pl: failed login for '", ($f{user} // ''), "'\n";
            form('401 Unauthorized', 'Wrong user name or password.');
        }
    } elsif ($method eq 'POST' && $path eq '/logout') {
        print "Status: 200 OK\r\nX-PSD-End-Session: 1\r\nContent-Type: text/plain\r\n\r\nlogged out\n";
    } elsif (!defined $user) {
        form('200 OK', '');
    } else {
        my $count = $state->add('count', 1);
        print "Content-Type: text/plain\r\n\r\nuser=$user count=$count pid=$$\n";
    }
}

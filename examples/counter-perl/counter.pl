#!/usr/bin/perl
# A psd worker in Perl: one process per session, so $count is that session's
# own. Uses Debian's libfcgi-perl; FCGI::Request() accepts on fd 0, where psd
# puts the listening socket. The count is kept in the session's state
# (PSD_STATE_URL), so a session that resumes — after its worker was stopped
# for idleness, or psd was restarted — goes on counting where it was.
use strict;
use warnings;
use FCGI;
use FindBin;
use lib "$FindBin::Bin/../../clients/perl";
use PSD::State;

my $resumed = $ENV{PSD_RESUMED} // 0;
my $state   = PSD::State->new;
my $count   = $state ? ($state->get('count') // 0) : 0;
my $request = FCGI::Request();
print STDERR "counter.pl $$ started\n";

while ($request->Accept() >= 0) {
    my $body = '';
    read(STDIN, $body, $ENV{CONTENT_LENGTH}) if $ENV{CONTENT_LENGTH};
    $count++;
    $state->put('count', $count) if $state;
    print "Content-Type: text/plain\r\n\r\n";
    print "pid=$$ count=$count resumed=$resumed body=", length($body),
      " session=$ENV{PSD_SESSION_ID} script=$ENV{SCRIPT_NAME} path=$ENV{PATH_INFO}",
      " remote=$ENV{REMOTE_ADDR} access=$ENV{PSD_ACCESS}",
      " scheme=$ENV{REQUEST_SCHEME} https=", ($ENV{HTTPS} // 'off'), " host=$ENV{SERVER_NAME}:$ENV{SERVER_PORT} uid=$<",
      " state=", ($ENV{PSD_STATE_URL} // ''), " shared=", ($ENV{PSD_SHARED_URL} // ''),
      " user=", ($ENV{REMOTE_USER} // '-'), " authorization=", ($ENV{HTTP_AUTHORIZATION} ? 'passed' : '-'), "\n";
}

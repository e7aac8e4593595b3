#!/usr/bin/perl
# Logs in to the login example with LWP::UserAgent and HTTP::Cookies,
# counts three visits, logs out, and shows that the session is gone.
#   login.pl BASE_URL USER PASSWORD      (BASE_URL: http://127.0.0.1:8080/app)
use strict;
use warnings;
use LWP::UserAgent;
use HTTP::Cookies;

my ($base, $user, $password) = @ARGV;
die "usage: $0 BASE_URL USER PASSWORD\n" unless defined $password;
my $ua = LWP::UserAgent->new(cookie_jar => HTTP::Cookies->new, max_redirect => 0, timeout => 30);
my $res = $ua->post("$base/login", { user => $user, password => $password });
die "login failed: ", $res->status_line, "\n" unless $res->code == 303;
print "logged in as $user\n";
for (1 .. 3) {
    my ($count) = $ua->get("$base/")->decoded_content =~ /(count=\d+)/;
    print "$count\n";
}
print $ua->post("$base/logout")->decoded_content;
print "the session is gone\n" if $ua->get("$base/")->decoded_content =~ /login form/;

#!/usr/bin/perl
# The benchmarks' Perl script: the per-process counter of
# examples/counter-perl without its state store, so that the CGI row runs the
# same work under psd and under fcgiwrap. Uses Debian's libfcgi-perl;
# FCGI::Request() accepts on fd 0, where psd puts the listening socket.
use strict;
use warnings;
use FCGI;

my $resumed = $ENV{PSD_RESUMED} // 0;
my $count   = 0;
my $request = FCGI::Request();
print STDERR "counter.pl $$ started\n";

while ($request->Accept() >= 0) {
    my $body = '';
    read(STDIN, $body, $ENV{CONTENT_LENGTH}) if $ENV{CONTENT_LENGTH};
    $count++;
    print "Content-Type: text/plain\r\n\r\n";
    print "pid=$$ count=$count resumed=$resumed body=", length($body),
      " session=$ENV{PSD_SESSION_ID} script=$ENV{SCRIPT_NAME} path=$ENV{PATH_INFO}",
      " remote=$ENV{REMOTE_ADDR} access=$ENV{PSD_ACCESS}",
      " scheme=$ENV{REQUEST_SCHEME} https=", ($ENV{HTTPS} // 'off'), " host=$ENV{SERVER_NAME}:$ENV{SERVER_PORT} uid=$<\n";
}

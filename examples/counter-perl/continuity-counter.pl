#!/usr/bin/perl
# Continuity's eg/counter.pl as a psd FastCGI worker. Continuity keeps each
# user's place in the conversation in a continuation; here each user has a
# process of their own, so plain variables do: $count, and whether we are in
# the middle of asking "Do you really want to GO NEGATIVE?".
use strict;
use warnings;
use FCGI;

my $count   = 0;
my $asking  = 0;
my $request = FCGI::Request();

sub param {
    my ($name) = @_;
    for my $pair (split /[&;]/, $ENV{QUERY_STRING} // '') {
        my ($k, $v) = split /=/, $pair, 2;
        next unless defined $k && $k eq $name;
        $v //= '';
        $v =~ tr/+/ /;
        $v =~ s/%([0-9A-Fa-f]{2})/chr(hex($1))/ge;
        return $v;
    }
    return '';
}

sub page {
    print "Content-Type: text/html; charset=utf-8\r\n\r\n",
      "<!DOCTYPE html>\n<html><head><title>psd counter</title></head>\n<body>\n", @_, "</body></html>\n";
}

while ($request->Accept() >= 0) {
    my $option = param('option');
    if ($asking) {
        if ($option eq 'Yes' || $option eq 'No') {
            $count-- if $option eq 'Yes';
            $asking = 0;
        }
    } elsif ($option eq '++' || $option eq '  ') {
        $count++;
    } elsif ($option eq '--') {
        if ($count > 0) { $count-- } else { $asking = 1 }
    }
    if ($asking) {
        page("Do you really want to GO NEGATIVE?<br>\n",
             "<a href=\"?option=Yes\">Yes</a><br>\n<a href=\"?option=No\">No</a><br>\n");
    } else {
        page("Count: $count<br>\n<a href=\"?option=++\">++</a> &nbsp;&nbsp; <a href=\"?option=--\">--</a><br>\n",
             $count == 42 ? "<h1>The Answer to Life, The Universe, and Everything</h1>\n" : "");
    }
}

package PSD::Htpasswd;
# Checks a user name and password against an htpasswd file, for workers
# that log their users in themselves (examples/login). Uses the system's
# crypt(3) (libxcrypt on Debian): bcrypt ($2y$, htpasswd -B) and SHA-512/256
# crypt ($6$/$5$, htpasswd -5/-2). Apache's MD5 ($apr1$) and plaintext are
# refused.
#
#   use PSD::Htpasswd;
#   my $ok = PSD::Htpasswd::check('users.htpasswd', $user, $password);
use strict;
use warnings;

sub check {
    my ($file, $user, $password) = @_;
    return 0 unless defined $user && length $user && defined $password;
    open(my $fh, '<', $file) or die "PSD::Htpasswd: $file: $!\n";
    while (my $line = <$fh>) {
        chomp $line;
        next if $line =~ /^\s*(#|$)/;
        my ($name, $hash) = split /:/, $line, 2;
        next unless defined $hash && $name eq $user;
        return 0 unless $hash =~ /^\$(2[aby]|5|6)\$/;
        my $crypted = crypt($password, $hash);
        return defined $crypted && $crypted eq $hash ? 1 : 0;
    }
    # An unknown user costs the same as a known one.
    crypt($password, '$2y$05$abcdefghijklmnopqrstuu');
    return 0;
}

1;

package PSD::State;
# A psd worker's session state, over the state API (plain HTTP, HTTP::Tiny
# from Perl's core). psd gives every worker PSD_STATE_URL (its session's
# values) and PSD_SHARED_URL (its application's, shared by all sessions);
# both stop working when the worker stops.
#
#   use PSD::State;
#   my $state = PSD::State->new;            # undef when not under psd
#   my $count = $state->get('count') // 0;
#   $state->put('count', $count + 1);       # durable once it returns
#   my $hits  = $state->shared->add('hits', 1);
use strict;
use warnings;
use HTTP::Tiny;
use Carp qw(croak);

sub new {
    my ($class, $url) = @_;
    $url //= $ENV{PSD_STATE_URL};
    return undef unless defined $url && length $url;
    $url .= '/' unless $url =~ m{/\z};
    return bless { url => $url, http => HTTP::Tiny->new(keep_alive => 1, timeout => 10) }, $class;
}

# The application's shared space, as another PSD::State.
sub shared {
    my ($self) = @_;
    return PSD::State->new($ENV{PSD_SHARED_URL});
}

# The value under $key, or undef; in list context also its ETag.
sub get {
    my ($self, $key) = @_;
    my $res = $self->{http}->get($self->{url} . $key);
    return if $res->{status} == 404;
    croak "psd state GET $key: $res->{status} $res->{reason}" unless $res->{success};
    return wantarray ? ($res->{content}, $res->{headers}{etag}) : $res->{content};
}

# Stores $value under $key. With $etag, only if the value is still that one
# (returns false when another writer came first).
sub put {
    my ($self, $key, $value, $etag) = @_;
    my %headers = defined $etag ? ('If-Match' => $etag) : ();
    my $res = $self->{http}->request('PUT', $self->{url} . $key, { content => $value, headers => \%headers });
    return 0 if $res->{status} == 412;
    croak "psd state PUT $key: $res->{status} $res->{reason}" unless $res->{success};
    return 1;
}

sub delete {
    my ($self, $key) = @_;
    my $res = $self->{http}->delete($self->{url} . $key);
    croak "psd state DELETE $key: $res->{status} $res->{reason}" unless $res->{success} || $res->{status} == 404;
    return $res->{status} != 404;
}

# Adds $n to the integer under $key, atomically; the new value.
sub add {
    my ($self, $key, $n) = @_;
    my $res = $self->{http}->post($self->{url} . $key . '?add=' . ($n // 1));
    croak "psd state POST $key: $res->{status} $res->{reason}" unless $res->{success};
    (my $sum = $res->{content}) =~ s/\s+\z//;
    return $sum;
}

1;

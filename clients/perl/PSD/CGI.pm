package PSD::CGI;
# CGI.pm scripts as psd workers: a CGI::Fast subclass. Each request gets a
# fresh CGI object (nothing of the previous request's parameters lingers in
# the long-lived process, the persistence trap of CGI.pm under FastCGI), and
# the session's state is at hand:
#
#   use PSD::CGI;
#   while (my $q = PSD::CGI->new) {
#       my $count = ($q->state_get('count') // 0) + 1;
#       $q->state_put('count', $count);          # durable once it returns
#       print $q->header('text/plain'), "count=$count\n";
#   }
#
# CGI::Fast accepts on fd 0, where psd puts the listening socket.
use strict;
use warnings;
use parent 'CGI::Fast';
use PSD::State;

# One per worker: the URLs are the worker's, the same for every request.
my ($state, $shared);

sub new {
    my ($class, @args) = @_;
    # CGI.pm keeps the last request's parameters for the next object unless
    # told to forget them.
    CGI::initialize_globals() if defined &CGI::initialize_globals;
    my $q = $class->SUPER::new(@args) or return;
    $state  //= PSD::State->new($ENV{PSD_STATE_URL});
    $shared //= PSD::State->new($ENV{PSD_SHARED_URL});
    return $q;
}

# The session's own values (a PSD::State), or undef when not under psd.
sub state  { $state }
# The application's values, shared by all its sessions.
sub shared { $shared }

sub state_get { my ($self, $key) = @_; $state ? $state->get($key) : undef }
sub state_put { my ($self, $key, $value) = @_; $state ? $state->put($key, $value) : 0 }

1;

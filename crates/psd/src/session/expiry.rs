//! `SessionLifetime`: sessions past it are ended, whatever they are doing.
//!
//! One task looks a few times per the shortest lifetime any session has
//! (between 50 ms and 5 s apart), and sooner when a session with a shorter
//! one appears.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Registry;

const MIN_PERIOD: Duration = Duration::from_millis(50);
const MAX_PERIOD: Duration = Duration::from_secs(5);

impl Registry {
    /// Ends sessions as they pass their `SessionLifetime`, until dropped.
    pub async fn expire_sessions(self: Arc<Self>) {
        loop {
            let shortest = Duration::from_millis(self.shortest_lifetime.load(Ordering::Relaxed));
            let period = (shortest / 4).clamp(MIN_PERIOD, MAX_PERIOD);
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = self.lifetime_shortened.notified() => continue,
            }
            let ended = self.expire();
            if ended > 0 {
                tracing::debug!("{ended} sessions reached their SessionLifetime");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::config::LocationConfig;
    use crate::session::tests::{hit, registry};

    /// A session is ended within a quarter of its lifetime after it passes.
    #[tokio::test(start_paused = true)]
    async fn sessions_end_soon_after_their_lifetime() {
        let registry = registry(10);
        let sweeper = tokio::spawn(registry.clone().expire_sessions());
        let mut location = LocationConfig::in_process("/", crate::demo::counter());
        location.session_lifetime = Duration::from_secs(8);
        let location = Arc::new(location);
        let app = crate::session::AppKey::new(None, "/");
        let (parts, params) = hit("/", None);
        registry
            .resolve(&app, &location, &parts.hit(&params))
            .await
            .unwrap();
        assert_eq!(registry.count(), 1);
        tokio::time::sleep(Duration::from_millis(7_900)).await;
        assert_eq!(registry.count(), 1, "alive before its lifetime");
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        assert_eq!(registry.count(), 0, "gone within a quarter lifetime after");
        sweeper.abort();
    }
}

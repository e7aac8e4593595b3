//! `SessionLifetime`: sessions past it are ended, whatever they are doing.
//!
//! One task looks a few times per the shortest lifetime any session has
//! (between 50 ms and 5 s apart), and sooner when a session with a shorter
//! one appears. Dormant sessions that only the state store still holds
//! (their worker stopped, or psd restarted) are purged from it at start and
//! then every [`PURGE_PERIOD`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Registry;

const MIN_PERIOD: Duration = Duration::from_millis(50);
const MAX_PERIOD: Duration = Duration::from_secs(5);
/// How often records past their lifetime are deleted from the store. A
/// request for one meanwhile finds it expired and gets a new session.
const PURGE_PERIOD: Duration = Duration::from_secs(60);

impl Registry {
    /// Ends sessions as they pass their `SessionLifetime`, until dropped.
    pub async fn expire_sessions(self: Arc<Self>) {
        let mut next_purge = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_purge {
                next_purge += PURGE_PERIOD;
                let now = crate::store::unix_ms(std::time::SystemTime::now());
                match self.store.purge_expired(now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("{n} dormant sessions reached their SessionLifetime"),
                    Err(e) => tracing::warn!("state store: purging expired sessions: {e}"),
                }
            }
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

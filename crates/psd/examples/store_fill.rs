//! Fills a psd `DataDir` with dormant sessions, for `bench/state.py`'s
//! restart row: `store_fill DATA_DIR N` writes N session records of the
//! application at `/` of the main server, each with a 1 KiB value, signed
//! with the DataDir's secret, and prints one of their ids.

use std::sync::Arc;
use std::time::SystemTime;

use psd::mapper::Signer;
use psd::store::{unix_ms, Condition, Embedded, SessionRecord, Space, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(n)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: store_fill DATA_DIR N");
    };
    let dir = std::path::PathBuf::from(dir);
    let n: usize = n.parse()?;
    std::fs::create_dir_all(&dir)?;
    let signer = Signer::load_or_create(&dir.join("secret"), "psd")?;
    let store = Arc::new(Embedded::open(&dir.join("state.redb"))?);
    let app = "main /";
    let now = unix_ms(SystemTime::now());
    let value = vec![b'x'; 1024];
    let mut last = String::new();
    let mut writes = Vec::with_capacity(n);
    for _ in 0..n {
        let id = signer.issue(app);
        let key = format!("id={id}\n");
        let saved = store.save(SessionRecord {
            app: app.into(),
            key: key.clone(),
            id: id.clone(),
            created: now,
            last_active: now,
            expires: now + 86_400_000,
            node: "psd".into(),
            user: None,
        });
        let space = Space::Session {
            app: app.into(),
            key,
        };
        let put = store.put(&space, "blob", value.clone(), Condition::Always, 1 << 20);
        writes.push(async move {
            saved.await?;
            put.await.map(drop)
        });
        last = id;
    }
    for write in writes {
        write.await?;
    }
    println!("{last}");
    Ok(())
}

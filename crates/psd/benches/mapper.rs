//! The mapper's cost per request: reading the id from the request, checking
//! its HMAC, and building the session key; plus issuing a new id and finding
//! the client address behind a proxy.
//!
//!     cargo bench -p psd --bench mapper

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Uri};
use psd::mapper::{client, Hit, IdBook, Ids, Mapper, SessionKey, Signer};

fn key(words: &str) -> SessionKey {
    SessionKey::parse(
        &words
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let book = IdBook::new(Signer::new("node-1", b"0123456789abcdef0123456789abcdef"));
    let ids = Ids::new(&book, "main /");
    let id = book.issue("main /");
    let mut headers = HeaderMap::new();
    headers.insert(
        "cookie",
        HeaderValue::from_str(&format!("theme=dark; psd_sid={id}; lang=en")).unwrap(),
    );
    let mut forged = HeaderMap::new();
    forged.insert(
        "cookie",
        HeaderValue::from_str(&format!("psd_sid={}AAAA", &id[..id.len() - 4])).unwrap(),
    );
    let uri: Uri = "/app/page?x=1".parse().unwrap();
    let client: IpAddr = "203.0.113.9".parse().unwrap();
    let hit = |headers| Hit {
        method: &Method::GET,
        uri: &uri,
        headers,
        path: "/page",
        client,
        params: &[],
        user: None,
    };

    let cookie = key("cookie psd_sid");
    c.bench_function("map: cookie id (parse + HMAC verify + key)", |b| {
        b.iter(|| black_box(cookie.get_session_id_from_hit(black_box(&hit(&headers)), &ids)))
    });
    c.bench_function("map: forged cookie id (rejected)", |b| {
        b.iter(|| black_box(cookie.get_session_id_from_hit(black_box(&hit(&forged)), &ids)))
    });
    let combined = key("cookie psd_sid path ip");
    c.bench_function("map: cookie + path + ip", |b| {
        b.iter(|| black_box(combined.get_session_id_from_hit(black_box(&hit(&headers)), &ids)))
    });
    c.bench_function("assign: new session id (CSPRNG + HMAC)", |b| {
        b.iter(|| black_box(cookie.assign_session_id(black_box(&hit(&forged)), &ids)))
    });
    let trusted = ["10.0.0.0/8".parse().unwrap(), "127.0.0.1".parse().unwrap()];
    let mut forwarded = HeaderMap::new();
    forwarded.insert(
        "x-forwarded-for",
        HeaderValue::from_static("198.51.100.1, 203.0.113.9, 10.1.2.3"),
    );
    c.bench_function("client address behind two trusted proxies", |b| {
        b.iter(|| {
            black_box(client::client_addr(
                black_box("127.0.0.1".parse().unwrap()),
                &forwarded,
                &trusted,
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

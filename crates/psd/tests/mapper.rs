//! The mapper through a real psd and the Perl worker: query, path and ip
//! keys, client addresses behind proxies, per-client limits, read-only ids.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn counter() -> PathBuf {
    repo().join("examples/counter-perl/counter.pl")
}

fn location_with(key: &str, extra: &str) -> String {
    location("/app", &counter(), &format!("SessionKey {key}\n{extra}"))
}

#[test]
fn query_mode_redirects_a_first_request_and_links_with_the_id_keep_the_session() {
    let d = Daemon::start(&location_with("query sid", ""));
    let c = Client::anonymous();
    let first = c.get(&d.url("/app/page?x=1&sid=forged"));
    assert_eq!(first.status, 303);
    assert!(
        first.header("set-cookie").is_none(),
        "query mode sets no cookie"
    );
    let to = first.header("location").unwrap().to_string();
    assert!(to.starts_with("/app/page?x=1&sid=psd."), "{to}");
    assert!(!to.contains("forged"));
    let id = to.split("sid=").nth(1).unwrap().to_string();

    let a = c.get(&d.url(&to));
    let b = c.get(&d.url(&format!("/app/other?sid={id}")));
    assert_eq!((a.count(), b.count()), (1, 2));
    assert_eq!(a.pid(), b.pid());
    assert_eq!(a.field("session").as_deref(), Some(id.as_str()));

    let posted = c.request(
        &d.url("/app/form"),
        &["--data", &format!("name=x&sid={id}")],
    );
    assert_eq!(
        posted.count(),
        3,
        "the id may come in an urlencoded POST body"
    );
    assert_eq!(
        posted.field("body").as_deref(),
        Some(format!("name=x&sid={id}").len().to_string()).as_deref(),
        "the worker still gets the whole body"
    );

    let other = c.get(&d.url("/app/page"));
    assert_eq!(other.status, 303);
    assert_ne!(
        other.header("location").unwrap(),
        to,
        "a second client gets another session"
    );
}

#[test]
fn with_cookie_and_query_the_cookie_wins() {
    let d = Daemon::start(&location_with("cookie psd_sid query sid", ""));
    let c = Client::with_jar(&d.dir, "c");
    let first = c.get(&d.url("/app/"));
    assert_eq!(first.status, 303);
    assert!(
        first.header("set-cookie").is_some(),
        "both parts: cookie and redirect"
    );
    let via_cookie = c.get(&d.url("/app/"));
    assert_eq!(via_cookie.count(), 1);
    let theirs = Client::anonymous()
        .get(&d.url("/app/"))
        .header("location")
        .unwrap()
        .to_string();
    let their_id = theirs.split("sid=").nth(1).unwrap();
    let both = c.get(&d.url(&format!("/app/?sid={their_id}")));
    assert_eq!(both.count(), 2, "the cookie's session, not the query's");
    assert_eq!(both.pid(), via_cookie.pid());
}

#[test]
fn path_mode_keeps_one_session_per_path_under_one_cookie() {
    let d = Daemon::start(&location_with("cookie psd_sid path", ""));
    let c = Client::with_jar(&d.dir, "c");
    let a1 = c.get(&d.url("/app/a"));
    let b1 = c.get(&d.url("/app/b"));
    let a2 = c.get(&d.url("/app/a"));
    let b2 = c.get(&d.url("/app/b"));
    assert_eq!(
        (a1.count(), b1.count(), a2.count(), b2.count()),
        (1, 1, 2, 2)
    );
    assert_eq!(a1.pid(), a2.pid());
    assert_ne!(a1.pid(), b1.pid());
    assert!(a1.header("set-cookie").is_some());
    assert!(
        b1.header("set-cookie").is_none(),
        "a new path keeps the cookie's id"
    );
    assert_eq!(a1.field("session"), b1.field("session"));
}

#[test]
fn ip_mode_gives_each_client_address_its_own_session() {
    let d = Daemon::start(&location_with("ip", ""));
    let from =
        |source: &str| Client::anonymous().request(&d.url("/app/"), &["--interface", source]);
    let x1 = from("127.0.0.2");
    let y1 = from("127.0.0.3");
    let x2 = from("127.0.0.2");
    assert_eq!((x1.count(), y1.count(), x2.count()), (1, 1, 2));
    assert_eq!(x1.pid(), x2.pid());
    assert_ne!(x1.pid(), y1.pid());
    assert_eq!(x1.field("remote").as_deref(), Some("127.0.0.2"));
    assert!(
        x1.header("set-cookie").is_none(),
        "nothing to hand out in ip mode"
    );
}

#[test]
fn forwarded_addresses_count_only_from_trusted_proxies() {
    let d = Daemon::start(&format!(
        "TrustedProxy 127.0.0.1\n{}",
        location_with("ip", "")
    ));
    let via = |source: &str, forwarded: &str| {
        Client::anonymous().request(&d.url("/app/"), &["--interface", source, "-H", forwarded])
    };
    let a = via("127.0.0.1", "X-Forwarded-For: 203.0.113.7");
    let b = via("127.0.0.1", "Forwarded: for=198.51.100.9;proto=http");
    let a2 = via("127.0.0.1", "X-Forwarded-For: 6.6.6.6, 203.0.113.7");
    assert_eq!(a.field("remote").as_deref(), Some("203.0.113.7"));
    assert_eq!(b.field("remote").as_deref(), Some("198.51.100.9"));
    assert_ne!(a.pid(), b.pid());
    assert_eq!(
        (a2.pid(), a2.count()),
        (a.pid(), 2),
        "the rightmost untrusted hop is the client"
    );

    // 127.0.0.4 is not trusted: its claims are ignored.
    let u1 = via("127.0.0.4", "X-Forwarded-For: 203.0.113.7");
    let u2 = via("127.0.0.4", "X-Forwarded-For: 192.0.2.1");
    assert_eq!(u1.field("remote").as_deref(), Some("127.0.0.4"));
    assert_eq!((u2.pid(), u2.count()), (u1.pid(), 2));
    assert_ne!(u1.pid(), a.pid());
}

#[test]
fn max_sessions_per_client_gives_503_to_that_client_only() {
    let d = Daemon::start(&location_with("cookie psd_sid", "MaxSessionsPerClient 2"));
    let from =
        |source: &str| Client::anonymous().request(&d.url("/app/"), &["--interface", source]);
    assert_eq!(from("127.0.0.2").status, 200);
    assert_eq!(from("127.0.0.2").status, 200);
    let refused = from("127.0.0.2");
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        from("127.0.0.3").status,
        200,
        "other clients are not affected"
    );
}

#[test]
fn a_read_only_id_sees_the_session_but_cannot_change_or_escalate() {
    let d = Daemon::start(&location_with("cookie psd_sid", ""));
    let owner = Client::with_jar(&d.dir, "owner");
    let first = owner.get(&d.url("/app/"));
    let rw_id = first.field("session").unwrap();
    let link = share_link(&owner.get(&d.url("/app/.psd/share")));
    assert!(link.starts_with("/app/.psd/join?id="), "{link}");
    let ro_id = link.split("id=").nth(1).unwrap().to_string();
    assert_ne!(ro_id, rw_id);
    assert_eq!(
        share_link(&owner.get(&d.url("/app/.psd/share"))),
        link,
        "one read-only id per session"
    );

    let viewer = Client::with_jar(&d.dir, "viewer");
    let joined = viewer.get(&d.url(&link));
    assert_eq!(joined.status, 303);
    assert!(joined.header("set-cookie").unwrap().contains(&ro_id));
    let seen = viewer.get(&d.url("/app/"));
    assert_eq!(
        (seen.pid(), seen.count()),
        (first.pid(), 2),
        "same session, same state"
    );
    assert_eq!(seen.field("access").as_deref(), Some("read-only"));
    assert_eq!(
        seen.field("session"),
        Some(ro_id.clone()),
        "the worker never shows a viewer the read-write id"
    );
    assert_eq!(first.field("access").as_deref(), Some("read-write"));

    let posted = viewer.request(&d.url("/app/"), &["--data", "x=1"]);
    assert_eq!(posted.status, 403);
    for method in ["PUT", "DELETE", "PATCH"] {
        assert_eq!(
            viewer.request(&d.url("/app/"), &["-X", method]).status,
            403,
            "{method}"
        );
    }
    assert_eq!(
        viewer.get(&d.url("/app/.psd/share")).status,
        403,
        "a viewer cannot share onwards"
    );
    assert_eq!(
        owner.get(&d.url("/app/")).count(),
        3,
        "the owner still writes"
    );
}

#[test]
fn read_only_ids_are_unforgeable_and_die_with_their_session() {
    let d = Daemon::start(&location_with("query sid", ""));
    let c = Client::anonymous();
    let to = c
        .get(&d.url("/app/"))
        .header("location")
        .unwrap()
        .to_string();
    let rw_id = to.split("sid=").nth(1).unwrap().to_string();
    let first = c.get(&d.url(&to));
    let link = share_link(&c.get(&d.url(&format!("/app/.psd/share?sid={rw_id}"))));
    assert!(
        link.starts_with("/app/?sid="),
        "query mode shares a query link: {link}"
    );
    let ro_id = link.split("sid=").nth(1).unwrap().to_string();
    let viewed = c.get(&d.url(&link));
    assert_eq!(
        (viewed.pid(), viewed.field("access").as_deref()),
        (first.pid(), Some("read-only"))
    );

    // A read-only id cannot be edited into the read-write one, nor forged.
    let (body, _) = ro_id.rsplit_once('.').unwrap();
    let rw_tag = rw_id.rsplit_once('.').unwrap().1;
    for forged in [
        format!("{body}.{rw_tag}"),
        ro_id.replace(body, rw_id.rsplit_once('.').unwrap().0),
    ] {
        let r = c.get(&d.url(&format!("/app/?sid={forged}")));
        assert_eq!(r.status, 303, "{forged} must start a new session");
    }

    // The session never used again ends with its worker idle and is then
    // gone entirely once reaped; its read-only id goes with it.
    let reaped = Daemon::start(&location_with("query sid", "SessionLifetime 1s"));
    let to = c
        .get(&reaped.url("/app/"))
        .header("location")
        .unwrap()
        .to_string();
    let rw = to.split("sid=").nth(1).unwrap().to_string();
    c.get(&reaped.url(&to));
    let link = share_link(&c.get(&reaped.url(&format!("/app/.psd/share?sid={rw}"))));
    assert_eq!(c.get(&reaped.url(&link)).status, 200);
    assert!(
        eventually(Duration::from_secs(5), || c.get(&reaped.url(&link)).status
            == 303),
        "read-only id outlived its session"
    );
}

#[test]
fn in_path_mode_a_read_only_id_reaches_every_path_of_the_session() {
    let d = Daemon::start(&location_with("cookie psd_sid path", ""));
    let owner = Client::with_jar(&d.dir, "owner");
    let a = owner.get(&d.url("/app/a"));
    let link = share_link(&owner.get(&d.url("/app/.psd/share")));
    let viewer = Client::with_jar(&d.dir, "viewer");
    viewer.get(&d.url(&link));
    let seen = viewer.get(&d.url("/app/a"));
    assert_eq!(
        (seen.pid(), seen.field("access").as_deref()),
        (a.pid(), Some("read-only"))
    );
}

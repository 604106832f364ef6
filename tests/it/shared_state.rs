//! Shared state on Redis, against real `redis-server` processes: two wxgate
//! replicas sharing one store, restarts, a store that stops answering, what
//! the store holds at rest, Redis Cluster, Sentinel and TLS.

use crate::common::redis::{RedisCluster, RedisSentinel, RedisServer};
use crate::common::*;
use wxgate::config::{RedisMode, Secret, StoreKind};

const REDIS_SECRET: &str = "a-redis-secret-for-tests-0123456789abcdef";

/// Configures a gate for the store at `url`.
fn on_redis(url: &str) -> impl FnOnce(&mut wxgate::Config) + use<> {
    let url = url.to_owned();
    move |c| {
        c.session.store = StoreKind::Redis;
        c.redis.url = url;
        c.redis.secret = Secret::new(REDIS_SECRET);
        c.redis.timeout = HumanDuration(Duration::from_millis(300));
    }
}

fn openid_of(r: &Received) -> Option<String> {
    r.headers.get("x-wx-openid").map(|v| v.to_str().unwrap().to_owned())
}

fn mint(fake: &FakeWeixin, user: &str, phone: &str) -> Value {
    phone_body(fake, user, phone, None, None)
}

/// Two replicas on one Redis: a login on one is known to the other, with
/// its key; a retried login costs no second WeChat call; the seed's race
/// (data made just before a re-login elsewhere) still decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_sessions_codes_and_keys() {
    let redis = RedisServer::start();
    let a = gate(on_redis(&redis.url())).await;
    let b = replica_of(&a, on_redis(&redis.url())).await;

    // Login on A, identity on B.
    let token = a.login("alice.1").await;
    assert_eq!(b.get("/me", Some(&token)).await.status, 200);
    assert_eq!(openid_of(&b.upstream.last()), Some(FakeWeixin::openid_for("alice")));

    // Phone on B with data encrypted under the key of the login on A.
    let a2 = b
        .post("/api/phone", Some(&token), mint(&a.fake, "alice", "13800000001"))
        .await;
    assert_eq!(a2.status, 200, "{}", a2.text());
    assert_eq!(values(&b.upstream.last().headers, "x-wx-phone-number"), ["13800000001"]);

    // The seed's race across replicas: data minted, then a re-login on B
    // (carrying the session from A) replaces the key; A still decrypts.
    let before_relogin = mint(&a.fake, "alice", "13800000002");
    let relogin = b.post("/api/login", Some(&token), json!({"code": "alice.2"})).await;
    assert_eq!(relogin.status, 200, "{}", relogin.text());
    let token2 = relogin.session().unwrap();
    let a3 = a.post("/api/phone", Some(&token2), before_relogin).await;
    assert_eq!(a3.status, 200, "{}", a3.text());
    assert_eq!(values(&a.upstream.last().headers, "x-wx-phone-number"), ["13800000002"]);

    // A retried login on B after A answered: the same token, one WeChat call.
    let calls = a.fake.calls(Api::Jscode2Session);
    let first = a.login("bob.1").await;
    let again = b.login("bob.1").await;
    assert_eq!(first, again);
    assert_eq!(a.fake.calls(Api::Jscode2Session), calls + 1);

    // Concurrent identical logins on A and B: one WeChat call, one session.
    let calls = a.fake.calls(Api::Jscode2Session);
    let (x, y) = tokio::join!(a.login("slow:300:carol.1"), b.login("slow:300:carol.1"));
    assert_eq!(x, y);
    assert_eq!(a.fake.calls(Api::Jscode2Session), calls + 1);
    finish(a).await;
    finish(b).await;
}

/// A logout on one replica ends the session on every replica, also where
/// it sits in the in-process cache (kept for an hour here, so only the
/// revocation message can clear it); so does the admin's revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_replica() {
    let redis = RedisServer::start();
    let long_l1 = |url: String| {
        move |c: &mut wxgate::Config| {
            on_redis(&url)(c);
            c.redis.l1_ttl = HumanDuration(Duration::from_secs(3600));
        }
    };
    let a = gate(long_l1(redis.url())).await;
    let b = replica_of(&a, long_l1(redis.url())).await;
    // Both replicas listen before anything is cached.
    assert!(eventually(async || logs().matches("listening for session revocations").count() >= 2).await);

    let token = a.login("dora.1").await;
    b.get("/warm", Some(&token)).await;
    assert_eq!(openid_of(&b.upstream.last()), Some(FakeWeixin::openid_for("dora")));
    assert_eq!(a.post("/api/logout", Some(&token), json!({})).await.status, 200);
    assert!(
        eventually(async || {
            b.get("/after-logout", Some(&token)).await;
            openid_of(&b.upstream.last()).is_none()
        })
        .await,
        "B still honours a session A logged out"
    );

    // The admin ends every session of a user, on every replica.
    let t1 = a.login("eve.1").await;
    let t2 = b.login("eve.2").await;
    for (gate, token) in [(&a, &t1), (&b, &t2), (&b, &t1), (&a, &t2)] {
        gate.get("/warm", Some(token)).await;
        assert!(openid_of(&gate.upstream.last()).is_some());
    }
    let url = format!("http://{}/sessions?openid={}", b.admin, FakeWeixin::openid_for("eve"));
    let revoked = send(Request::delete(url).body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(revoked.json()["revoked"], 2, "{}", revoked.text());
    for (gate, token) in [(&a, &t1), (&a, &t2), (&b, &t1), (&b, &t2)] {
        assert!(
            eventually(async || {
                gate.get("/after-ban", Some(token)).await;
                openid_of(&gate.upstream.last()).is_none()
            })
            .await
        );
    }
    finish(a).await;
    finish(b).await;
}

/// A restart (every deploy) logs nobody out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_session() {
    let redis = RedisServer::start();
    let mut a = gate(on_redis(&redis.url())).await;
    let tokens = [a.login("u1.1").await, a.login("u2.1").await, a.login("u3.1").await];
    a.stop().await;
    let b = replica_of(&a, on_redis(&redis.url())).await;
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(b.get("/again", Some(token)).await.status, 200);
        assert_eq!(
            openid_of(&b.upstream.last()),
            Some(FakeWeixin::openid_for(&format!("u{}", i + 1)))
        );
    }
    finish(b).await;
}

/// A store that stops answering never makes a logged-in user anonymous:
/// 503 `session_store_unavailable`, nothing forwarded; requests without a
/// token pass; wxgate comes back by itself when Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_store_is_a_503_never_an_anonymous_forward() {
    let mut redis = RedisServer::start();
    let a = gate(on_redis(&redis.url())).await;
    let b = replica_of(&a, on_redis(&redis.url())).await;
    let fresh = [a.login("f1.1").await, a.login("f2.1").await];

    for outage in ["paused", "killed"] {
        match outage {
            "paused" => redis.pause(),
            _ => redis.kill(),
        }
        let token = if outage == "paused" { &fresh[0] } else { &fresh[1] };
        let before = b.upstream.count();
        // B has never seen this token: only Redis could answer.
        let res = b.get("/needs-a-session", Some(token)).await;
        res.assert_error(503, "session_store_unavailable");
        assert!(res.headers.contains_key(header::RETRY_AFTER));
        assert_eq!(b.upstream.count(), before, "{outage}: forwarded without its identity");
        b.post("/api/login", None, json!({"code": "newbie.1"}))
            .await
            .assert_error(503, "session_store_unavailable");
        // Anonymous traffic does not need the store.
        assert_eq!(b.get("/public", None).await.status, 200);
        let ready = b.admin_get("/readyz").await;
        assert_eq!(ready.status, 200, "one store's outage does not take every replica out");
        assert_eq!(ready.json()["session_store"], "unavailable");
        let metrics = b.admin_get("/metrics").await.text();
        assert_eq!(metric_value(&metrics, "wxgate_session_store_up"), Some(0.0), "{outage}");

        match outage {
            "paused" => redis.resume(),
            _ => redis.restart(),
        }
        if outage == "paused" {
            // Back by itself: no restart of wxgate.
            assert!(
                eventually(async || {
                    let res = b.get("/back", Some(token)).await;
                    res.status == 200 && openid_of(&b.upstream.last()).is_some()
                })
                .await,
                "{outage}: the session did not come back"
            );
        } else {
            // A killed Redis without persistence lost its data: the store
            // answers again, and the token is simply unknown now.
            assert!(
                eventually(async || {
                    let res = b.get("/back", Some(token)).await;
                    res.status == 200 && openid_of(&b.upstream.last()).is_none()
                })
                .await,
                "{outage}: the store did not come back"
            );
            assert_eq!(b.login("reborn.1").await.len(), 22);
        }
        assert_eq!(b.admin_get("/readyz").await.json()["session_store"], "ok");
    }
    finish(a).await;
    finish(b).await;
}

/// A connection Redis closed while it sat idle (Redis' own `timeout` for
/// idle clients, a restart, a failover) is remade for the next command: no
/// request sees a 503 for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_redis_closed_while_idle_is_remade_without_an_error() {
    let redis = RedisServer::start();
    let gate = gate({
        let on = on_redis(&redis.url());
        move |c| {
            on(c);
            c.server.workers = 1;
            // Every request with a token goes to Redis.
            c.redis.l1_ttl = HumanDuration(Duration::ZERO);
        }
    })
    .await;
    let token = gate.login("idle.1").await;
    for round in 0..3 {
        // What Redis' `timeout` does to idle clients (the caller is spared).
        redis.command(&["CLIENT", "KILL", "TYPE", "normal"]);
        let res = gate.get("/after-idle", Some(&token)).await;
        assert_eq!(res.status, 200, "round {round}: {}", res.text());
        assert_eq!(
            openid_of(&gate.upstream.last()).as_deref(),
            Some("oFAKEidle"),
            "round {round}"
        );
    }
    finish(gate).await;
}

/// A forced access-token refresh invalidates every replica's token, and
/// WeChat allows about 20 a day: with replicas on one Redis, at most one
/// forces per 30 s, whichever sees the rejected token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_force_a_token_refresh_once_between_them() {
    let redis = RedisServer::start();
    let a = gate(on_redis(&redis.url())).await;
    let b = replica_of(&a, on_redis(&redis.url())).await;
    let token = a.login("force.1").await;
    for (i, gate) in [&a, &b].into_iter().enumerate() {
        let res = gate
            .post(
                "/api/phone",
                Some(&token),
                json!({"code": format!("phone:13800000000.{i}")}),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text());
    }
    a.fake.revoke_access_tokens();
    let phones = (0..8).map(|i| {
        let gate = if i % 2 == 0 { &a } else { &b };
        let token = &token;
        async move {
            gate.post(
                "/api/phone",
                Some(token),
                json!({"code": format!("phone:13800000001.{i}")}),
            )
            .await
        }
    });
    for res in futures_util::future::join_all(phones).await {
        // A replica that lost the race may answer 502 until the new token is out.
        assert!(res.status == 200 || res.status == 502, "{} {}", res.status, res.text());
    }
    assert_eq!(a.fake.forced_refreshes(), 1, "forced by both replicas");
    // Both come back with the refreshed token.
    for (i, gate) in [&a, &b].into_iter().enumerate() {
        let res = gate
            .post(
                "/api/phone",
                Some(&token),
                json!({"code": format!("phone:13800000002.{i}")}),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.text());
    }
    assert_eq!(a.fake.forced_refreshes(), 1);
    finish(a).await;
    finish(b).await;
}

/// With no traffic at all, `/readyz` and `wxgate_session_store_up` still
/// follow Redis: the revocation subscription is pinged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_health_follows_redis_without_traffic() {
    let redis = RedisServer::start();
    let gate = gate(on_redis(&redis.url())).await;
    let store = async |want: &str| {
        for _ in 0..300 {
            if gate.admin_get("/readyz").await.json()["session_store"] == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(store("ok").await, "the store never said ok");
    redis.pause();
    assert!(
        store("unavailable").await,
        "a paused Redis went unnoticed without traffic"
    );
    let metrics = gate.admin_get("/metrics").await.text();
    assert_eq!(metric_value(&metrics, "wxgate_session_store_up"), Some(0.0));
    redis.resume();
    assert!(store("ok").await, "the store did not come back");
    finish(gate).await;
}

/// The names wxgate wrote, as `KEYS *` lists them.
fn key_names(redis: &RedisServer) -> Vec<String> {
    redis
        .command(&["KEYS", "*"])
        .lines()
        .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
        .map(str::to_owned)
        .collect()
}

/// Garbage in Redis under wxgate's names (a value of another type, bytes
/// that do not open) is treated as absent and logged: never a 500, a 503 or
/// a hang, and the next login writes over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_is_absent_and_the_next_login_repairs_it() {
    let redis = RedisServer::start();
    let gate = gate({
        let on = on_redis(&redis.url());
        move |c| {
            on(c);
            c.redis.l1_ttl = HumanDuration(Duration::ZERO);
        }
    })
    .await;
    let token = gate.login("junk.1").await;
    let names = key_names(&redis);
    assert!(
        names.len() >= 4,
        "a session, an index, a key history, a code: {names:?}"
    );
    // Every string becomes a list, every list or set a string.
    for name in &names {
        let kind = redis.command(&["TYPE", name]);
        redis.command(&["DEL", name]);
        if kind.trim() == "+string" {
            redis.command(&["RPUSH", name, "junk"]);
        } else {
            redis.command(&["SET", name, "junk"]);
        }
    }
    // The session is gone: the request is anonymous, not an error.
    let res = gate.get("/after-junk", Some(&token)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(openid_of(&gate.upstream.last()), None);
    // The same code again: its stored outcome is junk, so WeChat is asked,
    // and says the code was used.
    let again = gate.post("/api/login", None, json!({"code": "junk.1"})).await;
    assert!(again.status.is_client_error(), "{} {}", again.status, again.text());
    assert!(again.json()["error"].is_string(), "{}", again.text());
    assert_eq!(gate.fake.calls(Api::Jscode2Session), 2);
    // A new login writes over the user's damaged index and key history.
    let token2 = gate.login("junk.2").await;
    assert_eq!(gate.get("/fresh", Some(&token2)).await.status, 200);
    assert_eq!(openid_of(&gate.upstream.last()).as_deref(), Some("oFAKEjunk"));
    let phone = gate
        .post("/api/phone", Some(&token2), mint(&gate.fake, "junk", "13800138000"))
        .await;
    assert_eq!(phone.status, 200, "{}", phone.text());
    // Values of the right type that do not open: absent too.
    for name in key_names(&redis) {
        if redis.command(&["TYPE", &name]).trim() == "+string" {
            redis.command(&["SET", &name, "not sealed by wxgate"]);
        }
    }
    assert_eq!(gate.get("/after-forgery", Some(&token2)).await.status, 200);
    assert_eq!(openid_of(&gate.upstream.last()), None);
    assert!(logs().contains("does not open"), "the forgery is logged");
    // A login outcome that does not open: WeChat is asked again.
    let calls = gate.fake.calls(Api::Jscode2Session);
    let replay = gate.post("/api/login", None, json!({"code": "junk.2"})).await;
    assert!(replay.status.is_client_error(), "{} {}", replay.status, replay.text());
    assert_eq!(gate.fake.calls(Api::Jscode2Session), calls + 1);
    finish(gate).await;
}

/// Nothing readable at rest: after logins, a phone remembered and a key
/// history, no key or value holds a token, a session_key, an openid, a
/// unionid or a phone number, in any of the forms they travel in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_readable_at_rest() {
    let redis = RedisServer::start();
    let a = gate(|c| {
        on_redis(&redis.url())(c);
        c.phone.remember = true;
    })
    .await;
    let token = a.login("unionzed.1").await;
    let relogin = a.post("/api/login", Some(&token), json!({"code": "unionzed.2"})).await;
    let token2 = relogin.session().unwrap();
    let phone = a
        .post("/api/phone", Some(&token2), mint(&a.fake, "unionzed", "13912345678"))
        .await;
    assert_eq!(phone.status, 200, "{}", phone.text());
    let key = a.fake.session_key("unionzed").unwrap();

    let mut secrets: Vec<Vec<u8>> = vec![
        token.clone().into_bytes(),
        token2.clone().into_bytes(),
        key.to_base64().into_bytes(),
        key.as_bytes().to_vec(),
        FakeWeixin::openid_for("unionzed").into_bytes(),
        b"UFAKEunionzed".to_vec(),
        b"13912345678".to_vec(),
        b"unionzed".to_vec(),
    ];
    for t in [&token, &token2] {
        use base64::Engine;
        secrets.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).unwrap());
    }
    let keys = redis.command(&["KEYS", "*"]);
    let names: Vec<String> = keys
        .lines()
        .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 4, "sessions, an index, a key history, codes: {names:?}");
    for name in &names {
        let kind = redis.command(&["TYPE", name]);
        let dump = redis.command_bytes(&[b"DUMP", name.as_bytes()]);
        let value = match kind.trim() {
            "+string" => redis.command_bytes(&[b"GET", name.as_bytes()]),
            "+list" => redis.command_bytes(&[b"LRANGE", name.as_bytes(), b"0", b"-1"]),
            "+set" => redis.command_bytes(&[b"SMEMBERS", name.as_bytes()]),
            other => panic!("{name}: unexpected type {other}"),
        };
        for secret in &secrets {
            for haystack in [name.as_bytes(), &dump, &value] {
                assert!(
                    !haystack.windows(secret.len()).any(|w| w == secret.as_slice()),
                    "{name} holds {:?}",
                    String::from_utf8_lossy(secret)
                );
            }
        }
    }
    finish(a).await;
}

/// Redis Cluster (three masters): every key is one slot, so everything works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let on_cluster = |seeds: String| {
        move |c: &mut wxgate::Config| {
            on_redis(&seeds)(c);
            c.redis.mode = RedisMode::Cluster;
            c.phone.remember = true;
        }
    };
    let a = gate(on_cluster(cluster.seed_list())).await;
    let b = replica_of(&a, on_cluster(cluster.seed_list())).await;
    let tokens: Vec<String> = futures_util::future::join_all((0..12).map(|i| a.login_owned(format!("c{i}.1")))).await;
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(b.get("/me", Some(token)).await.status, 200);
        assert_eq!(
            openid_of(&b.upstream.last()),
            Some(FakeWeixin::openid_for(&format!("c{i}")))
        );
    }
    // Keys landed on more than one node.
    let per_node: Vec<i64> = cluster
        .nodes()
        .iter()
        .map(|n| n.query(&["DBSIZE"]).as_int().unwrap_or(0))
        .collect();
    assert!(per_node.iter().filter(|n| **n > 0).count() >= 2, "{per_node:?}");
    // A retried login, a remembered phone, a logout.
    assert_eq!(b.login("c0.1").await, tokens[0]);
    let p = b
        .post("/api/phone", Some(&tokens[1]), mint(&a.fake, "c1", "13700000001"))
        .await;
    assert_eq!(p.status, 200, "{}", p.text());
    a.get("/remembered", Some(&tokens[1])).await;
    assert_eq!(values(&a.upstream.last().headers, "x-wx-phone-number"), ["13700000001"]);
    assert_eq!(b.post("/api/logout", Some(&tokens[2]), json!({})).await.status, 200);
    assert!(
        eventually(async || {
            a.get("/gone", Some(&tokens[2])).await;
            openid_of(&a.upstream.last()).is_none()
        })
        .await
    );
    finish(a).await;
    finish(b).await;
}

/// Redis Sentinel: the master is found through the sentinels, and after a
/// failover wxgate follows the new master by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let mut sentinel = RedisSentinel::start();
    let urls = sentinel.sentinel_urls().join(",");
    let master = sentinel.master_name().to_owned();
    let on_sentinel = |urls: String, master: String| {
        move |c: &mut wxgate::Config| {
            on_redis(&urls)(c);
            c.redis.mode = RedisMode::Sentinel;
            c.redis.master_name = master;
        }
    };
    let a = gate(on_sentinel(urls.clone(), master.clone())).await;
    let b = replica_of(&a, on_sentinel(urls, master)).await;
    let token = a.login("sent.1").await;
    assert_eq!(b.get("/me", Some(&token)).await.status, 200);
    assert_eq!(openid_of(&b.upstream.last()), Some(FakeWeixin::openid_for("sent")));

    let old = sentinel.master().port();
    sentinel.master_mut().kill();
    let new = sentinel.wait_for_new_master(Duration::from_secs(30));
    assert_ne!(new, old);
    // New logins work on the new master, found through the sentinels again.
    assert!(
        eventually(async || b.post("/api/login", None, json!({"code": "after.1"})).await.status == 200).await,
        "no login after the failover"
    );
    finish(a).await;
    finish(b).await;
}

/// `rediss://` with the server's CA from `[redis].tls_ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_redis_with_a_private_ca() {
    let redis = RedisServer::start_tls();
    let ca = redis.ca_file().unwrap().display().to_string();
    let with_tls = |url: String, ca: String| {
        move |c: &mut wxgate::Config| {
            on_redis(&url)(c);
            c.redis.tls_ca_file = ca;
        }
    };
    let a = gate(with_tls(redis.url(), ca.clone())).await;
    let b = replica_of(&a, with_tls(redis.url(), ca)).await;
    let token = a.login("tls.1").await;
    assert_eq!(b.get("/me", Some(&token)).await.status, 200);
    assert_eq!(openid_of(&b.upstream.last()), Some(FakeWeixin::openid_for("tls")));
    finish(a).await;
    finish(b).await;
}

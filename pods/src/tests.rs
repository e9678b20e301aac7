use std::net::IpAddr;

use serde_json::json;

use super::*;

fn pod(ns: &str, name: &str, uid: &str, ips: &[&str], phase: &str) -> Pod {
    let pod_ips: Vec<_> = ips.iter().map(|ip| json!({ "ip": ip })).collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "resourceVersion": "1",
            "labels": { "app": name, "team": "pay" }
        },
        "spec": {
            "serviceAccountName": format!("{name}-sa"),
            "nodeName": "node-1",
            "containers": [{ "name": "main", "image": "busybox" }]
        },
        "status": { "phase": phase, "podIP": ips.first(), "podIPs": pod_ips }
    }))
    .expect("pod json")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn owner(cache: &PodCache, addr: &str) -> Option<String> {
    match cache.lookup(ip(addr)) {
        Lookup::Pod(p) => Some(format!("{}/{}", p.namespace, p.name)),
        Lookup::Conflict => Some("CONFLICT".into()),
        Lookup::Unknown => None,
    }
}

fn writer() -> CacheWriter {
    CacheWriter::new(PodCache::new())
}

#[test]
fn running_pod_owns_all_its_addresses() {
    let mut w = writer();
    w.apply(&pod(
        "pay",
        "api",
        "u1",
        &["10.0.0.1", "fd00::1"],
        "Running",
    ));
    let c = w.cache();
    assert_eq!(owner(c, "10.0.0.1").as_deref(), Some("pay/api"));
    assert_eq!(owner(c, "fd00::1").as_deref(), Some("pay/api"));
    assert_eq!(owner(c, "::ffff:10.0.0.1").as_deref(), Some("pay/api"));
    assert_eq!(owner(c, "10.0.0.2"), None);
    let Lookup::Pod(p) = c.lookup(ip("10.0.0.1")) else {
        panic!("no pod")
    };
    assert_eq!(&*p.service_account, "api-sa");
    assert_eq!(
        p.spiffe("td.example"),
        "spiffe://td.example/ns/pay/sa/api-sa"
    );
    assert_eq!(p.node.as_deref(), Some("node-1"));
    assert_eq!(p.labels.len(), 2);
    assert_eq!(c.stats().pods, 1);
    assert_eq!(c.stats().addresses, 2);
}

#[test]
fn pending_pod_without_address_and_host_network_pod_own_nothing() {
    let mut w = writer();
    w.apply(&pod("pay", "new", "u1", &[], "Pending"));
    let mut host = pod("kube-system", "proxy", "u2", &["192.168.1.10"], "Running");
    host.spec.as_mut().expect("spec").host_network = Some(true);
    w.apply(&host);
    assert_eq!(owner(w.cache(), "192.168.1.10"), None);
    assert_eq!(w.cache().stats().pods, 0);
}

#[test]
fn completed_pod_keeps_podip_but_not_the_address() {
    let mut w = writer();
    w.apply(&pod("batch", "job", "u1", &["10.0.0.5"], "Running"));
    assert_eq!(owner(w.cache(), "10.0.0.5").as_deref(), Some("batch/job"));
    w.apply(&pod("batch", "job", "u1", &["10.0.0.5"], "Succeeded"));
    assert_eq!(owner(w.cache(), "10.0.0.5"), None);
    w.apply(&pod("web", "front", "u2", &["10.0.0.5"], "Running"));
    assert_eq!(owner(w.cache(), "10.0.0.5").as_deref(), Some("web/front"));
    w.apply(&pod("batch", "job2", "u3", &["10.0.0.5"], "Failed"));
    assert_eq!(owner(w.cache(), "10.0.0.5").as_deref(), Some("web/front"));
}

#[test]
fn two_live_claims_are_a_conflict_until_one_goes() {
    let mut w = writer();
    w.apply(&pod("old", "a", "u1", &["10.0.0.9"], "Running"));
    w.apply(&pod("new", "b", "u2", &["10.0.0.9"], "Running"));
    assert_eq!(owner(w.cache(), "10.0.0.9").as_deref(), Some("CONFLICT"));
    w.delete(&pod("old", "a", "u1", &["10.0.0.9"], "Running"));
    assert_eq!(owner(w.cache(), "10.0.0.9").as_deref(), Some("new/b"));
    w.delete(&pod("new", "b", "u2", &["10.0.0.9"], "Running"));
    assert_eq!(owner(w.cache(), "10.0.0.9"), None);
    assert_eq!(w.cache().stats().addresses, 0);
}

/// A Pod's update never shows readers a state between its old claim and its new one: a contested
/// address stays a conflict (never the other Pod's), and an owned address stays owned (never
/// unknown, which would fall through to the static table). A reader thread looks while the
/// writer changes a label back and forth.
#[test]
fn updates_never_show_readers_a_state_in_between() {
    let mut w = writer();
    let mut contested = pod("old", "a", "u1", &["10.0.0.5", "10.0.0.6"], "Running");
    w.apply(&pod("new", "b", "u2", &["10.0.0.5"], "Running"));
    w.apply(&contested);
    assert_eq!(owner(w.cache(), "10.0.0.5").as_deref(), Some("CONFLICT"));
    assert_eq!(owner(w.cache(), "10.0.0.6").as_deref(), Some("old/a"));
    let cache = Arc::clone(w.cache());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut wrong = Vec::new();
            let end = std::time::Instant::now() + Duration::from_secs(20);
            while !done.load(Ordering::Acquire) && std::time::Instant::now() < end {
                for (addr, want) in [("10.0.0.5", "CONFLICT"), ("10.0.0.6", "old/a")] {
                    let seen = owner(&cache, addr);
                    if seen.as_deref() != Some(want) && wrong.len() < 5 {
                        wrong.push(format!("{addr}: {seen:?}"));
                    }
                }
            }
            wrong
        })
    };
    for i in 0..20_000 {
        contested
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("round".into(), (i % 2).to_string());
        w.apply(&contested);
    }
    done.store(true, Ordering::Release);
    let wrong = reader.join().expect("reader");
    assert!(wrong.is_empty(), "readers saw {wrong:?}");
}

#[test]
fn a_pod_that_changes_address_releases_the_old_one() {
    let mut w = writer();
    w.apply(&pod("pay", "api", "u1", &["10.0.0.1"], "Running"));
    w.apply(&pod("pay", "api", "u1", &["10.0.0.2"], "Running"));
    assert_eq!(owner(w.cache(), "10.0.0.1"), None);
    assert_eq!(owner(w.cache(), "10.0.0.2").as_deref(), Some("pay/api"));
}

#[test]
fn label_changes_are_seen() {
    let mut w = writer();
    let mut p = pod("pay", "api", "u1", &["10.0.0.1"], "Running");
    w.apply(&p);
    p.metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert("tier".into(), "gold".into());
    w.apply(&p);
    let Lookup::Pod(id) = w.cache().lookup(ip("10.0.0.1")) else {
        panic!("no pod")
    };
    assert!(id
        .labels
        .iter()
        .any(|(k, v)| &**k == "tier" && &**v == "gold"));
}

#[test]
fn relist_removes_pods_deleted_meanwhile_and_marks_synced() {
    let mut w = writer();
    assert!(!w.cache().is_synced());
    w.begin_relist();
    w.apply(&pod("a", "one", "u1", &["10.0.0.1"], "Running"));
    w.apply(&pod("a", "two", "u2", &["10.0.0.2"], "Running"));
    w.end_relist();
    assert!(w.cache().is_synced());
    // Reconnect: `two` was deleted and its address reused while the watch was down.
    w.begin_relist();
    w.apply(&pod("a", "one", "u1", &["10.0.0.1"], "Running"));
    w.apply(&pod("b", "three", "u3", &["10.0.0.2"], "Running"));
    // Until the list is complete, the reused address is in conflict: fail closed.
    assert_eq!(owner(w.cache(), "10.0.0.2").as_deref(), Some("CONFLICT"));
    w.end_relist();
    assert_eq!(owner(w.cache(), "10.0.0.2").as_deref(), Some("b/three"));
    assert_eq!(owner(w.cache(), "10.0.0.1").as_deref(), Some("a/one"));
    assert_eq!(w.cache().stats().pods, 2);
    assert_eq!(w.cache().stats().relists, 2);
}

#[test]
fn pods_without_uid_or_with_bad_addresses_are_ignored() {
    let mut w = writer();
    w.apply(&pod("a", "x", "", &["10.0.0.1"], "Running"));
    w.apply(&pod("a", "y", "u2", &["not-an-ip"], "Running"));
    assert_eq!(w.cache().stats().pods, 0);
}

#[test]
fn repeating_strings_are_shared() {
    let mut w = writer();
    w.apply(&pod("pay", "a", "u1", &["10.0.0.1"], "Running"));
    w.apply(&pod("pay", "b", "u2", &["10.0.0.2"], "Running"));
    let (Lookup::Pod(a), Lookup::Pod(b)) = (
        w.cache().lookup(ip("10.0.0.1")),
        w.cache().lookup(ip("10.0.0.2")),
    ) else {
        panic!("no pods")
    };
    assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
    assert!(Arc::ptr_eq(&a.labels[1].0, &b.labels[1].0));
}

#[test]
fn a_failing_watch_is_timed_from_its_first_failure_until_the_map_is_current_again() {
    use std::time::Duration;
    let cache = PodCache::new();
    assert_eq!(cache.failing_for(), None, "not failing before it starts");
    cache.watch_failed();
    let first = cache.failing_for().expect("failing");
    std::thread::sleep(Duration::from_millis(20));
    cache.watch_failed();
    let later = cache.failing_for().expect("still failing");
    assert!(
        // Milliseconds, truncated: 20 ms of sleep reads as 19 or more.
        later >= first + Duration::from_millis(19),
        "a second failure must not restart the clock: {first:?} then {later:?}"
    );
    assert_eq!(cache.stats().errors, 2);

    // The API server sends a page of a list: it answers, but the map is not current yet.
    cache.touch();
    assert!(cache.stats().up);
    assert!(cache.failing_for().expect("still failing") >= later);
    // A probe's answer right after a failure: the watch may still be failing.
    cache.probe_answered(Duration::from_secs(10));
    assert!(cache.failing_for().is_some());
    // ... but once the watch has not failed for the quiet time, the map counts as current.
    std::thread::sleep(Duration::from_millis(40));
    cache.probe_answered(Duration::from_millis(30));
    assert_eq!(cache.failing_for(), None);

    cache.watch_failed();
    assert!(
        cache.failing_for().expect("failing again") < later,
        "a new clock"
    );
    cache.map_current();
    assert_eq!(
        cache.failing_for(),
        None,
        "a full list or a watch event ends it"
    );
}

//! The Pod cache at 100,000 Pods: memory per Pod, lookup time, and the initial sync from the test
//! API server (real protocol, HTTPS, paged list of 500).
//!
//! `cargo bench -p egress-bench --bench pod_cache` (release build). Prints one line per figure.
//! The lookup is also measured against a baseline in the same run: a `std` `HashMap` with the
//! same hash function (SipHash) behind an `RwLock`, the obvious locking design.

// The counting allocator is the one unsafe item here: it forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use egress_pods::{CacheWriter, Lookup, Pod, PodCache};
use egress_tests::apiserver::{ApiServer, PodBuilder};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PODS: usize = 100_000;

fn ip_of(i: usize) -> IpAddr {
    // 10.64.0.0/10: room for 4 million Pods.
    IpAddr::V4(Ipv4Addr::from(0x0A40_0000u32 + i as u32 + 1))
}

/// Realistic Pods: 2,000 Deployments of 50 replicas in 200 namespaces, five labels each (one
/// of them the ReplicaSet's `pod-template-hash`).
fn pod_json(i: usize) -> serde_json::Value {
    let deployment = i / 50;
    let ns = format!("team-{:03}", deployment % 200);
    let app = format!("service-{deployment:04}");
    PodBuilder::new(
        &ns,
        &format!("{app}-7d9c6b5f4-{i:06x}"),
        &ip_of(i).to_string(),
    )
    .service_account(&app)
    .label("app.kubernetes.io/name", &app)
    .label(
        "app.kubernetes.io/part-of",
        &format!("product-{:02}", deployment % 37),
    )
    .label("app.kubernetes.io/version", "1.14.2")
    .label("pod-template-hash", &format!("{:010x}", deployment * 7919))
    .label("tier", ["web", "api", "worker"][deployment % 3])
    .build()
}

fn main() {
    // The client's own share of a sync: decoding the Pods' JSON (what the watch receives).
    let texts: Vec<String> = (0..PODS).map(|i| pod_json(i).to_string()).collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    // Baseline in the same run: k8s-openapi's full Pod, every field built.
    let started = Instant::now();
    let full: usize = texts
        .iter()
        .map(|t| {
            let p: k8s_openapi::api::core::v1::Pod = serde_json::from_str(t).expect("full pod");
            usize::from(p.status.is_some())
        })
        .sum();
    let full_secs = started.elapsed().as_secs_f64();
    assert_eq!(full, PODS);
    let started = Instant::now();
    let pods: Vec<Pod> = texts
        .iter()
        .map(|t| serde_json::from_str(t).expect("pod"))
        .collect();
    let slim_secs = started.elapsed().as_secs_f64();
    println!(
        "pod_cache decode pods={PODS} json_bytes={bytes} seconds={slim_secs:.2} baseline_full_pod_seconds={full_secs:.2} ratio={:.2}",
        slim_secs / full_secs
    );
    drop(texts);

    // Memory: everything the cache and its writer keep, per Pod.
    let before = LIVE.load(Ordering::SeqCst);
    let cache = PodCache::new();
    let mut writer = CacheWriter::new(Arc::clone(&cache));
    writer.begin_relist();
    for p in &pods {
        writer.apply(p);
    }
    writer.end_relist();
    let after = LIVE.load(Ordering::SeqCst);
    assert_eq!(cache.stats().pods, PODS as u64);
    let per_pod = (after - before) as f64 / PODS as f64;
    println!("pod_cache pods={PODS} bytes_per_pod={per_pod:.0} (cache and writer, all of it)");
    drop(pods);

    // Lookup: the median over 200 batches of 10,000 lookups of known addresses, in a scattered order.
    let order: Vec<IpAddr> = (0..10_000)
        .map(|k| ip_of((k * 7_919 + 13) % PODS))
        .collect();
    let lookup = |ip| matches!(cache.lookup(ip), Lookup::Pod(_));
    let lockfree = median_ns(&order, lookup);
    // Baseline in the same run: the same answers in a std HashMap (the same SipHash) behind an
    // RwLock.
    type Baseline = HashMap<IpAddr, Arc<egress_pods::PodIdentity>>;
    let baseline: RwLock<Baseline> = RwLock::new(
        (0..PODS)
            .filter_map(|i| match cache.lookup(ip_of(i)) {
                Lookup::Pod(p) => Some((ip_of(i), p)),
                _ => None,
            })
            .collect(),
    );
    let locked_lookup = |ip| {
        baseline
            .read()
            .map(|m| m.get(&ip).cloned().is_some())
            .unwrap_or(false)
    };
    let locked = median_ns(&order, locked_lookup);
    println!(
        "pod_cache lookup_median_ns={lockfree:.1} baseline_rwlock_hashmap_ns={locked:.1} ratio={:.2}",
        lockfree / locked
    );
    // The same with two threads looking up at once, one per core (connections are served from
    // every worker thread): the larger of the two threads' medians.
    let both = |f: &(dyn Fn(IpAddr) -> bool + Sync)| {
        std::thread::scope(|s| {
            let a = s.spawn(|| median_ns(&order, f));
            let b = s.spawn(|| median_ns(&order, f));
            let (a, b) = (a.join().expect("thread"), b.join().expect("thread"));
            a.max(b)
        })
    };
    let lockfree2 = both(&lookup);
    let locked2 = both(&locked_lookup);
    println!(
        "pod_cache lookup_2_threads_median_ns={lockfree2:.1} baseline_rwlock_hashmap_ns={locked2:.1} ratio={:.2}",
        lockfree2 / locked2
    );
    drop(baseline);
    drop(writer);

    // Initial sync of 100,000 Pods from the test API server, through the real client and watcher.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = ApiServer::start().await;
        for i in 0..PODS {
            api.upsert(pod_json(i));
        }
        let client = egress_pods::client(Some(&api.kubeconfig()))
            .await
            .expect("client");
        let cache = PodCache::new();
        let started = Instant::now();
        let task = tokio::spawn(egress_pods::run(
            client,
            egress_pods::Scope::default(),
            CacheWriter::new(Arc::clone(&cache)),
        ));
        while !cache.is_synced() {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "sync too slow"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = started.elapsed();
        task.abort();
        println!(
            "pod_cache initial_sync pods={} seconds={:.2} pods_per_second={:.0} list_requests={}",
            cache.stats().pods,
            took.as_secs_f64(),
            cache.stats().pods as f64 / took.as_secs_f64(),
            api.requests("list")
        );
    });
}

fn median_ns(order: &[IpAddr], f: impl Fn(IpAddr) -> bool) -> f64 {
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        let mut hits = 0usize;
        for ip in order {
            hits += usize::from(f(std::hint::black_box(*ip)));
        }
        let ns = t.elapsed().as_nanos() as f64 / order.len() as f64;
        assert_eq!(hits, order.len());
        samples.push(ns);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

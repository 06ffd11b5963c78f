//! Policy microbenchmarks: decision latency at 1k and 100k rules, 100k-line list load.
//! Run: `cargo bench -p kennel-benches --bench policy`. Results: benches/README.md.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kennel_policy::{Policy, Target};

/// A list of `n` patterns: a third exact, a third `.domain`, a third `*.domain`.
fn list(n: usize) -> String {
    let mut s = String::with_capacity(n * 32);
    for i in 0..n {
        match i % 3 {
            0 => s.push_str(&format!("host{i}.example{}.com\n", i % 97)),
            1 => s.push_str(&format!(".svc{i}.example{}.net\n", i % 89)),
            _ => s.push_str(&format!("*.cdn{i}.example{}.org\n", i % 83)),
        }
    }
    s
}

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("kennel-bench-policy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create bench dir");
        std::fs::write(dir.join("list.txt"), list(n)).expect("write list");
        std::fs::write(
            dir.join("policy.toml"),
            "include = [\"list.txt\"]\n[deny]\nhosts = [\"*.evil.example0.com\"]\n",
        )
        .expect("write policy");
        Fixture { dir }
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn load(p: &Path) -> Policy {
    Policy::load(p).expect("bench policy is valid")
}

fn bench_decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_decide");
    for n in [1_000usize, 100_000] {
        let fx = Fixture::new(n);
        let policy = load(&fx.policy_path());
        assert_eq!(policy.stats().allow_patterns, n);
        let last = n - 1 - (n - 1) % 3; // an exact entry
        let cases = [
            (
                "exact_allowed",
                format!("host{last}.example{}.com:443", last % 97),
            ),
            (
                "suffix_allowed_5_labels",
                "a.b.svc1.example1.net:443".to_string(),
            ),
            ("wildcard_allowed", "x.cdn2.example2.org:443".to_string()),
            (
                "not_in_allowlist_6_labels",
                "a.b.c.d.nothere.example:443".to_string(),
            ),
            (
                "port_not_allowed",
                format!("host{last}.example{}.com:22", last % 97),
            ),
        ];
        for (name, t) in cases {
            let target = Target::parse_authority(&t).expect("valid target");
            let want = !name.starts_with("not_") && !name.starts_with("port_");
            assert_eq!(policy.decide(&target).is_allowed(), want, "{name}");
            g.bench_function(format!("{n}_rules/{name}"), |b| {
                b.iter(|| black_box(&policy).decide(black_box(&target)))
            });
        }
    }
    let embedded = Policy::embedded_default();
    g.bench_function("embedded/parse_authority_and_decide", |b| {
        b.iter(|| {
            let t = Target::parse_authority(black_box("API.GitHub.com:443")).expect("valid");
            embedded.decide(&t)
        })
    });
    g.finish();
}

/// This thread's on-CPU time in ns (Linux `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn bench_load(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_load");
    g.sample_size(10);
    let fx = Fixture::new(100_000);
    let path = fx.policy_path();
    g.bench_function("100k_line_list", |b| b.iter(|| load(black_box(&path))));
    // On a shared machine wall time includes waiting for a CPU; also report on-CPU time.
    if let Some(before) = thread_cpu_ns() {
        const N: u64 = 5;
        for _ in 0..N {
            black_box(load(&path));
        }
        if let Some(after) = thread_cpu_ns() {
            eprintln!(
                "policy_load/100k_line_list: {:.1} ms on-CPU per load (mean of {N})",
                (after - before) as f64 / N as f64 / 1e6
            );
        }
    }
    g.bench_function("embedded_default", |b| b.iter(Policy::embedded_default));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_decide, bench_load
}
criterion_main!(benches);

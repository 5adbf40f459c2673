//! Unit tests of the load tool: key draws, reports, argument checks.
use super::keys::*;
use super::report::*;
use super::*;
use crate::client::protocol::{Response, encode_response, parse_request};
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn zipf_stays_in_range() {
    let mut rng = StdRng::seed_from_u64(1);
    for (n, theta) in [
        (1u64, 0.99),
        (2, 0.99),
        (3, 0.5),
        (10, 0.0),
        (1000, 1.0),
        (1000, 1.5),
        (u64::MAX / 2, 0.99),
    ] {
        let z = Zipf::new(n, theta);
        for _ in 0..20_000 {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k), "n={n} theta={theta} k={k}");
        }
    }
}

#[test]
fn zipf_matches_its_probability_mass() {
    let mut rng = StdRng::seed_from_u64(7);
    let (n, theta) = (50u64, 0.99);
    let z = Zipf::new(n, theta);
    let draws = 400_000;
    let mut counts = vec![0u64; n as usize + 1];
    for _ in 0..draws {
        counts[z.sample(&mut rng) as usize] += 1;
    }
    let norm: f64 = (1..=n).map(|k| (k as f64).powf(-theta)).sum();
    for k in [1u64, 2, 3, 5, 10, 25, 50] {
        let expected = draws as f64 * (k as f64).powf(-theta) / norm;
        let got = counts[k as usize] as f64;
        // Within 5 standard deviations of the binomial count.
        let sd = expected.sqrt();
        assert!(
            (got - expected).abs() < 5.0 * sd + 1.0,
            "k={k} got={got} expected={expected:.0}"
        );
    }
}

#[test]
fn zipf_is_skewed_and_zero_theta_is_uniform() {
    let mut rng = StdRng::seed_from_u64(3);
    let z = Zipf::new(1_000_000, 0.99);
    let draws = 200_000;
    let hot = (0..draws).filter(|_| z.sample(&mut rng) <= 10).count();
    // The 10 hottest of a million keys take well over 10% of the draws.
    assert!(hot as f64 / draws as f64 > 0.10, "hot share {hot}");

    let u = Zipf::new(10, 0.0);
    let mut counts = [0u32; 11];
    for _ in 0..100_000 {
        counts[u.sample(&mut rng) as usize] += 1;
    }
    for c in &counts[1..] {
        assert!((9_000..11_000).contains(c), "{counts:?}");
    }
}

#[test]
fn key_sampler_covers_range_and_scatter_is_a_bijection() {
    for n in [1u64, 2, 7, 1000, 1024] {
        let s = Scatter::new(n);
        let mut seen: Vec<u64> = (0..n).map(|r| s.apply(r)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n}");
    }
    let mut rng = StdRng::seed_from_u64(5);
    for dist in [KeyDist::Uniform, KeyDist::Zipfian] {
        let ks = KeySampler::new(dist, 100, 0.99);
        for _ in 0..10_000 {
            assert!(ks.sample(&mut rng) < 100);
        }
    }
}

#[test]
fn key_names_have_ten_digits() {
    let mut b = [0u8; KEY_NAME_LEN];
    assert_eq!(key_name(0, &mut b), "key:0000000000");
    assert_eq!(key_name(42, &mut b), format!("key:{:010}", 42));
    assert_eq!(key_name(MAX_KEYS - 1, &mut b), "key:9999999999");
}

#[test]
fn argument_validation() {
    assert!(BenchArgs::default().validate().is_ok());
    let bad = [
        BenchArgs {
            keys: 0,
            ..BenchArgs::default()
        },
        BenchArgs {
            value_size: MAX_VALUE_SIZE + 1,
            ..BenchArgs::default()
        },
        BenchArgs {
            read_ratio: 1.5,
            ..BenchArgs::default()
        },
        BenchArgs {
            concurrency: 0,
            ..BenchArgs::default()
        },
        BenchArgs {
            duration: 0.0,
            ..BenchArgs::default()
        },
        BenchArgs {
            zipf_theta: -1.0,
            ..BenchArgs::default()
        },
        BenchArgs {
            pipeline: 0,
            ..BenchArgs::default()
        },
        BenchArgs {
            rate: Some(0.5),
            ..BenchArgs::default()
        },
        BenchArgs {
            rate: Some(f64::NAN),
            ..BenchArgs::default()
        },
        BenchArgs {
            rate: Some(1000.0),
            protocol: Protocol::Resp,
            ..BenchArgs::default()
        },
        BenchArgs {
            pipeline: UDP_PIPELINE_MAX + 1,
            ..BenchArgs::default()
        },
        BenchArgs {
            protocol: Protocol::Memcache,
            value_size: 1400,
            ..BenchArgs::default()
        },
        BenchArgs {
            protocol: Protocol::Memcache,
            pipeline: 0,
            ..BenchArgs::default()
        },
    ];
    let memcache = BenchArgs {
        protocol: Protocol::Memcache,
        pipeline: 16,
        value_size: 1000,
        ..BenchArgs::default()
    };
    assert!(
        memcache.validate().is_ok(),
        "1000-byte values fit a datagram"
    );
    let batched = BenchArgs {
        pipeline: 16,
        ..BenchArgs::default()
    };
    assert!(
        batched.validate().is_ok(),
        "UDP takes --pipeline: BATCH datagrams"
    );
    for args in bad {
        assert!(args.validate().is_err(), "{args:?}");
    }
}

fn sample_report() -> Report {
    Report {
        workload: Workload::Mixed,
        read_ratio: 0.9,
        value_size: 100,
        values: Values::Repeated,
        keys: 1000,
        key_dist: KeyDist::Zipfian,
        protocol: Protocol::Udp,
        pipeline: 1,
        concurrency: 64,
        rate: None,
        threads: 2,
        duration_s: 2.0,
        ops: 300,
        ok: 250,
        get_miss: 50,
        errors: 3,
        errors_by_status: vec![(Status::Failed, 1), (Status::NoSpace, 2)],
        timeouts: 4,
        busy: 5,
        redirects: 6,
        cookie_retries: 7,
        ops_per_sec: 150.0,
        p50_us: 10,
        p90_us: 20,
        p99_us: 30,
        p999_us: 40,
        max_us: 50,
        prefill: Some(PrefillReport {
            keys: 1000,
            failed: 0,
            seconds: 0.5,
        }),
        timeline: vec![(3, 140, 28), (4, 160, 31)],
        latency_cdf: vec![(0.5, 10), (0.99, 30), (1.0, 50)],
    }
}

#[test]
fn json_report_has_the_documented_fields() {
    let json = sample_report().to_json();
    for field in [
        "\"ops_per_sec\":150.000",
        "\"p50_us\":10",
        "\"p90_us\":20",
        "\"p99_us\":30",
        "\"p999_us\":40",
        "\"max_us\":50",
        "\"errors\":3",
        "\"timeouts\":4",
        "\"ops\":300",
        "\"duration_s\":2.000",
        "\"workload\":\"mixed\"",
        "\"value_size\":100",
        "\"concurrency\":64",
        "\"errors_by_status\":{\"Failed\":1,\"NoSpace\":2}",
        "\"sets_per_sec\":2000.000",
    ] {
        assert!(json.contains(field), "{field} missing from {json}");
    }
    assert!(json.starts_with('{') && json.ends_with('}') && !json.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&json).expect("the report is JSON");
    assert_eq!(
        v["timeline"],
        serde_json::json!([[3, 140, 28], [4, 160, 31]])
    );
    assert_eq!(v["latency_cdf"][1], serde_json::json!([0.99, 30]));
    let none = Report {
        prefill: None,
        errors_by_status: vec![],
        ..sample_report()
    };
    assert!(none.to_json().contains("\"prefill\":null"));
    assert!(none.to_json().contains("\"errors_by_status\":{}"));
}

#[test]
fn text_report_lists_percentiles_and_errors() {
    let text = sample_report().to_string();
    assert!(text.contains("150 ops/s"), "{text}");
    assert!(
        text.contains("p50 10  p90 20  p99 30  p99.9 40  max 50"),
        "{text}"
    );
    assert!(
        text.contains("errors        3 (Failed 1, NoSpace 2)"),
        "{text}"
    );
    assert!(text.contains("timeouts      4"), "{text}");
    assert!(text.contains("get-miss      50"), "{text}");
    assert!(text.contains("prefill       1000 keys"), "{text}");
    assert_eq!(sample_report().render(true), sample_report().to_json());
}

/// A tiny in-process server: demands a cookie once per address, answers Busy to
/// every 10th request, and otherwise stores and serves values.
fn toy_server(stop: Arc<AtomicBool>) -> (SocketAddr, thread::JoinHandle<u64>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let secret = [9u8; 16];
        let mut store = std::collections::HashMap::<String, Vec<u8>>::new();
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        let mut served = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(req) = parse_request(&buf[..n]) else {
                continue;
            };
            served += 1;
            let cookie = protocol::cookie_for(&secret, &from);
            let to = req.addressing();
            let value;
            let resp = if req.cookie != cookie {
                Response::cookie_required(&to, cookie)
            } else if served.is_multiple_of(10) {
                Response::reply(&to, Status::Busy, cookie, &[])
            } else {
                match req.op {
                    Op::Set => {
                        store.insert(req.key.to_string(), req.value.to_vec());
                        Response::reply(&to, Status::Ok, cookie, &[])
                    }
                    Op::Get => match store.get(req.key) {
                        Some(v) => {
                            value = v.clone();
                            Response::reply(&to, Status::Ok, cookie, &value)
                        }
                        None => Response::reply(&to, Status::NotFound, cookie, &[]),
                    },
                    _ => Response::reply(&to, Status::Ok, cookie, &[]),
                }
            };
            out.clear();
            encode_response(&resp, &mut out);
            let _ = sock.send_to(&out, from);
        }
        served
    });
    (addr, handle)
}

#[test]
fn end_to_end_against_a_toy_server() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server) = toy_server(stop.clone());
    let args = BenchArgs {
        server: addr.to_string(),
        workload: Workload::Mixed,
        read_ratio: 0.5,
        keys: 200,
        key_dist: KeyDist::Zipfian,
        concurrency: 16,
        threads: 2,
        sockets: 2,
        duration: 0.5,
        warmup: 0.1,
        timeout_ms: 500,
        prefill: true,
        ..BenchArgs::default()
    };
    let report = run(&args).unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let prefill = report.prefill.clone().unwrap();
    assert_eq!(prefill.keys, 200);
    assert_eq!(prefill.failed, 0);
    assert!(report.ops > 0, "{report}");
    assert_eq!(report.get_miss, 0, "prefilled keys must hit: {report}");
    assert_eq!(report.errors, 0, "{report}");
    assert!(report.busy > 0, "{report}");
    assert!(
        report.p50_us > 0 && report.p50_us <= report.max_us,
        "{report}"
    );
    assert_eq!(report.ops, report.ok + report.get_miss);

    // Without prefill or warmup, the cookie exchange falls inside the window.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server) = toy_server(stop.clone());
    let args = BenchArgs {
        server: addr.to_string(),
        prefill: false,
        warmup: 0.0,
        ..args
    };
    let report = run(&args).unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    assert!(report.cookie_retries >= 4, "one per socket: {report}");
    assert!(report.ops > 0 && report.errors == 0, "{report}");
}

#[test]
fn not_leader_redirects_move_the_load_to_the_leader() {
    let stop = Arc::new(AtomicBool::new(false));
    let (leader, leader_srv) = toy_server(stop.clone());
    let follower = UdpSocket::bind("127.0.0.1:0").unwrap();
    follower
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let follower_addr = follower.local_addr().unwrap();
    let stop_f = stop.clone();
    let follower_srv = thread::spawn(move || {
        let hint = leader.to_string();
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        let mut answered = 0u64;
        while !stop_f.load(Ordering::Relaxed) {
            let Ok((n, from)) = follower.recv_from(&mut buf) else {
                continue;
            };
            let Ok(req) = parse_request(&buf[..n]) else {
                continue;
            };
            let resp = Response::reply(&req.addressing(), Status::NotLeader, 0, hint.as_bytes());
            out.clear();
            encode_response(&resp, &mut out);
            let _ = follower.send_to(&out, from);
            answered += 1;
        }
        answered
    });
    let args = BenchArgs {
        server: follower_addr.to_string(),
        workload: Workload::Set,
        concurrency: 8,
        duration: 0.3,
        warmup: 0.0,
        timeout_ms: 300,
        ..BenchArgs::default()
    };
    let report = run(&args).unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(leader_srv.join().unwrap() > 0);
    assert!(follower_srv.join().unwrap() >= 1);
    assert!(
        report.redirects >= 1 && report.ops > 0 && report.errors == 0,
        "{report}"
    );
}

#[test]
fn silent_server_yields_timeouts_and_stops_on_time() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let args = BenchArgs {
        server: silent.local_addr().unwrap().to_string(),
        concurrency: 8,
        duration: 0.4,
        warmup: 0.0,
        timeout_ms: 100,
        ..BenchArgs::default()
    };
    let began = Instant::now();
    let report = run(&args).unwrap();
    assert!(began.elapsed() < Duration::from_secs(3));
    assert_eq!(report.ops, 0);
    assert!(report.timeouts >= 8, "{report}");
}

/// A server that answers SETs only in groups of `group` distinct outstanding requests (a
/// client with fewer in flight never hears back), and GETs at once.
fn grouping_server(stop: Arc<AtomicBool>, group: usize) -> (SocketAddr, thread::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let secret = [3u8; 16];
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        let mut held: std::collections::HashMap<(u64, u64), (SocketAddr, Vec<u8>)> =
            std::collections::HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(req) = parse_request(&buf[..n]) else {
                continue;
            };
            let cookie = protocol::cookie_for(&secret, &from);
            let to = req.addressing();
            out.clear();
            if req.cookie != cookie {
                encode_response(&Response::cookie_required(&to, cookie), &mut out);
            } else if req.op == Op::Set {
                encode_response(&Response::reply(&to, Status::Ok, cookie, &[]), &mut out);
                held.insert((req.client_id, req.request_seq), (from, out.clone()));
                if held.len() >= group {
                    for (_, (to, reply)) in held.drain() {
                        let _ = sock.send_to(&reply, to);
                    }
                }
                continue;
            } else {
                encode_response(&Response::reply(&to, Status::Ok, cookie, b"v"), &mut out);
            }
            let _ = sock.send_to(&out, from);
        }
    });
    (addr, handle)
}

/// The prefill keeps `--prefill-concurrency` SETs outstanding whatever the measured
/// phase's `--concurrency`: against a server that answers only groups of 16 outstanding
/// SETs, a prefill at the measured concurrency of 1 never hears back and gives up.
#[test]
fn prefill_runs_at_its_own_concurrency() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server) = grouping_server(stop.clone(), 16);
    let args = BenchArgs {
        server: addr.to_string(),
        workload: Workload::Get,
        keys: 16 * 2,
        concurrency: 1,
        prefill_concurrency: 16,
        threads: 1,
        sockets: 1,
        duration: 0.2,
        warmup: 0.0,
        timeout_ms: 100,
        prefill: true,
        ..BenchArgs::default()
    };
    let report = run(&args).unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let prefill = report.prefill.clone().unwrap();
    assert_eq!(prefill.keys, 16 * 2);
    assert_eq!(prefill.failed, 0, "{report}");
    assert!(report.ops > 0, "the measured phase ran: {report}");
}

/// A server that answers each request `delay` after it arrived, one at a time.
fn slow_server(stop: Arc<AtomicBool>, delay: Duration) -> (SocketAddr, thread::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let secret = [5u8; 16];
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(req) = parse_request(&buf[..n]) else {
                continue;
            };
            let cookie = protocol::cookie_for(&secret, &from);
            let to = req.addressing();
            out.clear();
            if req.cookie != cookie {
                encode_response(&Response::cookie_required(&to, cookie), &mut out);
            } else {
                thread::sleep(delay);
                encode_response(&Response::reply(&to, Status::Ok, cookie, &[]), &mut out);
            }
            let _ = sock.send_to(&out, from);
        }
    });
    (addr, handle)
}

/// `--rate` starts operations on a schedule, not as answers arrive: against a server that
/// answers at once, 16 virtual clients that would run tens of thousands of SETs in half a
/// second run the 2000/s they are asked for.
#[test]
fn open_loop_holds_the_offered_rate() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server) = grouping_server(stop.clone(), 1);
    let args = BenchArgs {
        server: addr.to_string(),
        workload: Workload::Set,
        keys: 100,
        concurrency: 16,
        threads: 2,
        sockets: 1,
        duration: 0.5,
        warmup: 0.1,
        rate: Some(2000.0),
        ..BenchArgs::default()
    };
    let report = run(&args).unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    assert_eq!(report.rate, Some(2000.0));
    assert!(
        (900..=1100).contains(&report.ops),
        "2000/s for 0.5 s: {report}"
    );
    assert_eq!(report.errors + report.timeouts, 0, "{report}");
    assert!(report.to_json().contains("\"rate\":2000.000"));
}

/// Open-loop latency counts from when each operation was due: with one virtual client
/// offered 1000/s against a server taking 10 ms per answer, the schedule falls further
/// behind with every operation, and the latencies say so (a closed loop would report
/// 10 ms and hide the queue).
#[test]
fn open_loop_latency_includes_the_wait_for_a_free_slot() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server) = slow_server(stop.clone(), Duration::from_millis(10));
    let args = BenchArgs {
        server: addr.to_string(),
        workload: Workload::Set,
        keys: 100,
        concurrency: 1,
        threads: 1,
        sockets: 1,
        duration: 0.5,
        warmup: 0.0,
        timeout_ms: 2000,
        rate: Some(1000.0),
        ..BenchArgs::default()
    };
    let report = run(&args).unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    assert!(report.ops > 10 && report.ops < 100, "{report}");
    assert!(
        report.p50_us > 100_000,
        "behind by ~9 ms per operation: {report}"
    );
    assert!(report.max_us > 300_000, "{report}");
}

/// `ocean-liner plot` draws every chart from reports as `--json` writes them, naming each
/// run by its file; a directory without reports is an error that says so.
#[test]
fn reports_are_plotted_as_svg_charts() {
    let dir = tempfile::tempdir().unwrap();
    assert!(super::plot::plot_dir(dir.path()).is_err());
    for name in ["first", "second"] {
        std::fs::write(
            dir.path().join(format!("{name}.json")),
            sample_report().to_json(),
        )
        .unwrap();
    }
    let files = super::plot::plot_dir(dir.path()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["throughput.svg", "latency-mixed.svg", "timeline-mixed.svg"]
    );
    for f in &files {
        let svg = std::fs::read_to_string(f).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{f:?}"
        );
        assert!(
            svg.contains("first") && svg.contains("second"),
            "{f:?} names the runs"
        );
    }
    // Runs of one system at several concurrencies make a sweep chart.
    for (name, concurrency) in [("sweep.c1", 64), ("sweep.c2", 128)] {
        let report = Report {
            concurrency,
            ..sample_report()
        };
        std::fs::write(dir.path().join(format!("{name}.json")), report.to_json()).unwrap();
    }
    let files = super::plot::plot_dir(dir.path()).unwrap();
    let sweep = files
        .iter()
        .find(|f| f.ends_with("concurrency-mixed.svg"))
        .expect("a sweep chart");
    let svg = std::fs::read_to_string(sweep).unwrap();
    assert!(
        svg.contains("sweep udp") && !svg.contains("first"),
        "one line, the sweep's"
    );
    let run = super::plot::read_run(&dir.path().join("first.json")).unwrap();
    assert_eq!(run.timeline, vec![(3, 140), (4, 160)]);
    assert_eq!(run.latency_cdf.last(), Some(&(1.0, 50)));
}

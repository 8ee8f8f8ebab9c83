//! Live rules: kubelet-style swaps, editor renames, invalid files, reload storms under load,
//! pausing, and admin auth — the real binary, a test upstream and the real broker.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn rules(url: &str, variant: &str, threshold: f64, paused: bool) -> String {
    format!(
        r#"
version: 1
upstreams: {{ llm: {{ url: "{url}" }} }}
tasks:
  - name: t
    upstream: llm
    confidence: {{ source: json_pointer, pointer: /confidence }}
    threshold: {threshold}
    paused: {paused}
    rollout:
      variants:
        - {{ name: {variant}, version: v1, weight: 100 }}
"#
    )
}

async fn decision(t: &Triage) -> (u16, String, String) {
    let r = client()
        .post(format!("{}/v1/x", t.data))
        .body("{}")
        .send()
        .await
        .unwrap();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (
        r.status().as_u16(),
        h("x-triage-decision"),
        h("x-triage-variant"),
    )
}

/// Poll until the answer matches, up to `within`.
async fn eventually(t: &Triage, want: (u16, &str, &str), within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = decision(t).await;
        if (got.0, got.1.as_str(), got.2.as_str()) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {got:?}, wanted {want:?}\n{}",
            t.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Triage on rules with variant `one` at threshold 0.5, reloaded by the watcher alone (no
/// poll).
async fn watched(up: &Upstream, extra: &[&str]) -> Triage {
    let mut args = vec!["--rules-poll-interval-ms", "0"];
    args.extend_from_slice(extra);
    Triage::start_with(&rules(&up.url(), "one", 0.5, false), &args, &[]).await
}

async fn admin_rules(t: &Triage) -> serde_json::Value {
    reqwest::get(format!("{}/admin/rules", t.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// The kubelet's atomic update: new timestamped dir, `..data_tmp` → it, rename over `..data`.
fn kubelet_swap(dir: &Path, stamp: &str, content: &str) {
    let new = dir.join(stamp);
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("rules.yaml"), content).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(stamp, &tmp);
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubelet_configmap_swap_is_picked_up_without_a_restart() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.6}))).await;
    // A ConfigMap volume: rules.yaml -> ..data/rules.yaml, ..data -> ..<timestamp>.
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("configmap");
    std::fs::create_dir(&cm).unwrap();

    let first = cm.join("..2026_11_23_10_00_00.1");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(
        first.join("rules.yaml"),
        rules(&up.url(), "one", 0.5, false),
    )
    .unwrap();
    symlink("..2026_11_23_10_00_00.1", &cm.join("..data"));
    symlink("..data/rules.yaml", &cm.join("rules.yaml"));

    let t = Triage::start_with_rules_path(&cm, &["--rules-poll-interval-ms", "0"]).await;
    assert_eq!(decision(&t).await, (200, "pass".into(), "one".into()));

    kubelet_swap(
        &cm,
        "..2026_11_23_10_01_00.2",
        &rules(&up.url(), "two", 0.7, false),
    );
    eventually(&t, (202, "review", "two"), Duration::from_secs(5)).await;

    // A second swap works too (a watch on the file itself would have died after the first).
    kubelet_swap(
        &cm,
        "..2026_11_23_10_02_00.3",
        &rules(&up.url(), "three", 0.5, false),
    );
    std::fs::remove_dir_all(cm.join("..2026_11_23_10_00_00.1")).unwrap();
    eventually(&t, (200, "pass", "three"), Duration::from_secs(5)).await;
    assert_eq!(
        t.metric("triage_rules_reloads_total", &[("result", "error")])
            .await,
        0.0
    );
    assert!(
        t.metric("triage_rules_reloads_total", &[("result", "ok")])
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_editor_that_writes_a_temp_file_and_renames_it_is_picked_up() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.6}))).await;
    let t = watched(&up, &[]).await;
    assert_eq!(decision(&t).await, (200, "pass".into(), "one".into()));
    let tmp = t.dir.path().join(".rules.yaml.swp");
    std::fs::write(&tmp, rules(&up.url(), "two", 0.7, false)).unwrap();
    std::fs::rename(&tmp, &t.rules_path).unwrap();
    eventually(&t, (202, "review", "two"), Duration::from_secs(5)).await;
    // SIGHUP reloads as well.
    std::fs::write(&t.rules_path, rules(&up.url(), "three", 0.5, false)).unwrap();
    let pid = t.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    eventually(&t, (200, "pass", "three"), Duration::from_secs(5)).await;
}

/// Counts every open of `file` by any process, from now on (inotify on its directory).
fn count_opens(file: &Path) -> (notify::RecommendedWatcher, Arc<AtomicUsize>) {
    use notify::event::{AccessKind, EventKind};
    use notify::{RecursiveMode, Watcher};
    let opens = Arc::new(AtomicUsize::new(0));
    let seen = opens.clone();
    let name = file.file_name().unwrap().to_owned();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e
            && matches!(e.kind, EventKind::Access(AccessKind::Open(_)))
            && e.paths.iter().any(|p| p.file_name() == Some(&name))
        {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    watcher
        .watch(file.parent().unwrap(), RecursiveMode::NonRecursive)
        .unwrap();
    (watcher, opens)
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_reload_the_rules_file_is_left_alone_until_it_changes_again() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.6}))).await;
    let t = watched(&up, &[]).await;
    let reloads = || t.metric("triage_rules_reloads_total", &[("result", "ok")]);
    let before = reloads().await;
    let (_watcher, opens) = count_opens(&t.rules_path);
    std::fs::write(&t.rules_path, rules(&up.url(), "two", 0.7, false)).unwrap();
    eventually(&t, (202, "review", "two"), Duration::from_secs(5)).await;
    let read = opens.load(Ordering::SeqCst);
    assert!(
        read >= 2,
        "our write and triage's read are both seen: {read}"
    );

    // Reading the file is not a change: nothing more opens it while nothing edits it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        opens.load(Ordering::SeqCst) - read,
        0,
        "the rules file was opened again with nothing changed"
    );
    assert_eq!(reloads().await, before + 1.0);

    // And the watch still sees the next edit.
    std::fs::write(&t.rules_path, rules(&up.url(), "three", 0.5, false)).unwrap();
    eventually(&t, (200, "pass", "three"), Duration::from_secs(5)).await;
}

/// Context switches of each of the process's threads but the main one (the runtime's), by
/// thread name (`/proc/PID/task/TID`).
fn helper_thread_switches(pid: u32) -> HashMap<String, u64> {
    let mut by_name = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        if task.file_name().unwrap().to_str() == Some(&pid.to_string()) {
            continue;
        }
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue; // a thread that ended meanwhile
        };
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
            .sum();
        *by_name.entry(name.trim().to_string()).or_default() += switches;
    }
    by_name
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_triage_sleeps_after_a_rules_edit() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.6}))).await;
    // One worker: the runtime is the main thread, and every other thread is a helper.
    let t = watched(&up, &["--worker-threads", "1"]).await;
    std::fs::write(&t.rules_path, rules(&up.url(), "two", 0.7, false)).unwrap();
    eventually(&t, (202, "review", "two"), Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The log writer, the blocking pool that reads the rules, the spool's writer, the
    // broker's I/O threads: with no request and no edit, none of them has anything to do.
    let pid = t.child.id().unwrap();
    let before = helper_thread_switches(pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = helper_thread_switches(pid);
    let woke: Vec<(String, u64)> = after
        .iter()
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 2)
        .collect();
    assert!(woke.is_empty(), "woke while idle: {woke:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_with_a_typo_is_refused_once_not_again_and_again() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.6}))).await;
    let good = rules(&up.url(), "one", 0.5, false);
    let t = Triage::start_with(&good, &["--rules-poll-interval-ms", "0"], &[]).await;
    let errors = || t.metric("triage_rules_reloads_total", &[("result", "error")]);
    std::fs::write(
        &t.rules_path,
        good.replace("threshold: 0.5", "threshold: 1.5"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while errors().await < 1.0 {
        assert!(Instant::now() < deadline, "the typo was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The watcher's retries (three tries over half a second) are one refusal, and the file is
    // not read again until it changes: the count and the log stay put.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(errors().await, 1.0);
    let logged = t.stderr().matches("rules reload refused").count();
    assert_eq!(logged, 1, "{}", t.stderr());
    assert_eq!(decision(&t).await, (200, "pass".into(), "one".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_file_changes_nothing_and_fixing_it_recovers() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.6}))).await;
    let good = rules(&up.url(), "one", 0.5, false);
    let t = Triage::start_with(&good, &[], &[("TRIAGE_ADMIN_TOKEN", "tok")]).await;
    let c = client();
    let bad_weights = good.replace("weight: 100", "weight: 90");
    let bad_upstream = good.replace("upstream: llm", "upstream: lm");
    let bad_threshold = good.replace("threshold: 0.5", "threshold: 1.5");
    let cases = [
        (
            "bad yaml",
            "version: 1\ntasks: [ {".to_string(),
            "not valid YAML",
        ),
        (
            "threshold 1.5",
            bad_threshold,
            "threshold: 1.5 is outside [0, 1]",
        ),
        ("weights 90", bad_weights, "weights sum to 90, expected 100"),
        ("unknown upstream", bad_upstream, "unknown upstream \"lm\""),
    ];
    for (i, (what, content, message)) in cases.iter().enumerate() {
        std::fs::write(&t.rules_path, content).unwrap();
        let r = c
            .post(format!("{}/admin/reload", t.admin))
            .bearer_auth("tok")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{what}");
        let v: serde_json::Value = r.json().await.unwrap();
        let has = |errors: &serde_json::Value| {
            errors
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e.as_str().unwrap().contains(message))
        };
        assert!(has(&v["errors"]), "{what}: {v}");
        assert_eq!(
            decision(&t).await,
            (200, "pass".into(), "one".into()),
            "{what}: old rules keep serving"
        );
        let shown = admin_rules(&t).await;
        assert_eq!(shown["last_reload"]["result"], "error", "{what}");
        assert!(has(&shown["last_reload"]["errors"]), "{what}: {shown}");

        assert_eq!(shown["tasks"][0]["variants"][0]["name"], "one");
        assert!(
            t.metric("triage_rules_reloads_total", &[("result", "error")])
                .await
                >= (i + 1) as f64,
            "{what}"
        );
        assert_eq!(
            t.metric("triage_rules_last_reload_successful", &[]).await,
            0.0,
            "{what}"
        );
    }
    assert!(
        t.logged("threshold: 1.5 is outside [0, 1]").await,
        "errors are logged with task and key"
    );

    std::fs::write(&t.rules_path, rules(&up.url(), "fixed", 0.5, false)).unwrap();
    eventually(&t, (200, "pass", "fixed"), Duration::from_secs(5)).await;
    let shown = admin_rules(&t).await;
    assert_eq!(shown["last_reload"]["result"], "ok");
    assert_eq!(
        t.metric("triage_rules_last_reload_successful", &[]).await,
        1.0
    );
    let hash = shown["hash"].as_str().unwrap();
    assert_eq!(t.metric("triage_rules_info", &[("hash", hash)]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_reloads_under_load_fail_no_request_and_never_mix_rule_sets() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.6}))).await;
    let a = rules(&up.url(), "alpha", 0.5, false); // 0.6 passes
    let b = rules(&up.url(), "beta", 0.7, false); // 0.6 is held
    let t = Arc::new(
        Triage::start_with(
            &a,
            &["--rules-poll-interval-ms", "0"],
            &[("TRIAGE_ADMIN_TOKEN", "tok")],
        )
        .await,
    );
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (t, done, stop) = (t.clone(), done.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .post(format!("{}/v1/x", t.data))
                    .body("{}")
                    .send()
                    .await
                    .expect("request failed");
                let h = |n: &str| {
                    r.headers()
                        .get(n)
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default()
                };
                let got = (
                    r.status().as_u16(),
                    h("x-triage-decision"),
                    h("x-triage-variant"),
                );
                assert!(
                    got == (200, "pass".into(), "alpha".into())
                        || got == (202, "review".into(), "beta".into()),
                    "a response from neither rule set: {got:?}"
                );
                seen.push(got.2);
                done.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    let c = client();
    for i in 0..50 {
        std::fs::write(&t.rules_path, if i % 2 == 0 { &b } else { &a }).unwrap();
        let r = c
            .post(format!("{}/admin/reload", t.admin))
            .bearer_auth("tok")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Let the load run past the last reload, then stop.
    while done.load(Ordering::Relaxed) < 2000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut alpha = 0;
    let mut beta = 0;
    for w in workers {
        for v in w.await.expect("a worker saw a failed or mixed response") {
            if v == "alpha" { alpha += 1 } else { beta += 1 }
        }
    }
    assert!(alpha + beta >= 2000);
    assert!(
        alpha > 0 && beta > 0,
        "both rule sets served: alpha {alpha}, beta {beta}"
    );
    assert_eq!(
        t.metric("triage_rules_reloads_total", &[("result", "error")])
            .await,
        0.0
    );
    assert_eq!(
        t.metric("triage_requests_total", &[("outcome", "rejected")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pausing_a_task_by_reload_holds_its_next_request_and_unpausing_releases() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.99}))).await;
    let t = Triage::start_with(
        &rules(&up.url(), "one", 0.5, false),
        &[],
        &[("TRIAGE_ADMIN_TOKEN", "tok")],
    )
    .await;
    let c = client();
    assert_eq!(decision(&t).await, (200, "pass".into(), "one".into()));

    std::fs::write(&t.rules_path, rules(&up.url(), "one", 0.5, true)).unwrap();
    let r = c
        .post(format!("{}/admin/reload", t.admin))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = t.post_empty(&c).await;
    assert_eq!(r.status(), 202, "paused: even a confident output is held");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "paused");
    let m = Broker::connect()
        .await
        .next(&t.names.review_queue, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(m.routing_key, "t.paused");
    let shown = admin_rules(&t).await;
    assert_eq!(shown["paused_tasks"], json!(["t"]));
    assert_eq!(shown["tasks"][0]["paused"], true);

    std::fs::write(&t.rules_path, rules(&up.url(), "one", 0.5, false)).unwrap();
    c.post(format!("{}/admin/reload", t.admin))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(decision(&t).await, (200, "pass".into(), "one".into()));
    assert_eq!(admin_rules(&t).await["paused_tasks"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_reload_needs_the_token_which_never_reaches_the_logs() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.99}))).await;
    let c = client();

    let no_token = Triage::start(&rules(&up.url(), "one", 0.5, false)).await;
    let r = c
        .post(format!("{}/admin/reload", no_token.admin))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no token configured: mutations disabled");

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let secret = "s3cret-admin-token-7f1c";
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    let t = Triage::start_with(
        &rules(&up.url(), "one", 0.5, false),
        &["--admin-token-file", token_file.to_str().unwrap()],
        &[],
    )
    .await;
    let r = c
        .post(format!("{}/admin/reload", t.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = c
        .post(format!("{}/admin/reload", t.admin))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{}/admin/reload", t.admin))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["result"], "ok");
    assert_eq!(v["changed"], false);

    let shown = admin_rules(&t).await.to_string();
    assert!(!shown.contains(secret));
    // Log lines are written every 50 ms: let whatever the requests logged get there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !t.stderr().contains(secret),
        "the token never reaches the logs"
    );
    let metrics = t.metrics().await;
    assert!(!metrics.contains(secret));
}

//! The operator console in a real browser: headless Chromium (Debian's,
//! driven over WebDriver through chromedriver) against `kvreplica serve` on
//! a generated backup whose state at every point is known.
//!
//! - The operator's flow: log in (a wrong token first), find a commit by
//!   its time, read what it changed (keys, kinds and decoded values against
//!   the fixture; under a prefix; over a Shift+clicked range), browse the
//!   state at it, check out the point before it (a real Deno CLI reader
//!   then reads exactly that state), plan a restore of that point into a
//!   real denokv primary (dry run), see another operator's checkout appear
//!   without reloading, go back to latest, log out.
//! - The timeline: every bar counts the fixture's commits of its interval;
//!   a click on a bar and ←/Enter on the focused plot list its commits.
//! - A narrow window: nothing sticks out, Tab reaches the actions.
//! - Behind a proxy that serves the admin listener under a path: the
//!   page addresses only that path (timeline, diff, checkout, back).
//!
//! Each step leaves a screenshot (see [`common::browser`] for where).

mod common;
#[path = "common/denokv.rs"]
mod denokv;
#[path = "common/export_entries.rs"]
mod export_entries;
#[path = "common/path_proxy.rs"]
mod path_proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::browser::Browser;
use common::fixture::Rec;
use common::serve::{run_deno, Method, ACCESS_TOKEN, ADMIN_TOKEN};
use common::served::Served;
use denokv::Denokv;
use fantoccini::key::Key;
use path_proxy::PathProxy;
use serde_json::{json, Value};

const DENO_TIMEOUT: Duration = Duration::from_secs(60);

/// The seed of the backup the console tests look at.
const SEED: u64 = 19;

impl Served {
    fn newest(&self) -> String {
        self.points.last().unwrap().1.clone()
    }

    fn console_url(&self) -> String {
        format!("{}/console/", self.serve.admin_url())
    }

    fn vs(&self, commit: usize) -> String {
        hex::encode(self.fx.commits[commit].versionstamp)
    }

    fn time_ms(&self, commit: usize) -> u64 {
        self.fx.point_time[&commit]
    }

    /// The point just before commit `index`'s: what "what did this commit
    /// change" diffs from.
    /// Empty for the oldest point: the state before it (the initial
    /// point's) is not recoverable, so no diff starts there.
    fn previous_vs(&self, index: usize) -> String {
        if index == self.fx.dv_commit + 1 {
            String::new()
        } else {
            self.vs(index - 1)
        }
    }

    /// The commit the test studies: in the middle of the history, with
    /// its previous commit a point too, changing at least two keys (so a
    /// prefix can leave one out), of at least two kinds when one is, and
    /// close enough to the newest commit of its backup object (the anchor
    /// a search by its time lands on) that the commits list around that
    /// anchor also shows its previous commit and the three after it.
    fn pick_commit(&self) -> usize {
        let first = self.fx.dv_commit + 2;
        let last = self.fx.last_initial - 6;
        let candidates: Vec<usize> = (first + (last - first) / 3..=last)
            .filter(|&k| {
                let anchor = self
                    .points
                    .iter()
                    .rfind(|p| p.2 <= self.time_ms(k))
                    .unwrap()
                    .0;
                anchor - k <= 5
                    && differences(&self.fx.state_at(k - 1), &self.fx.state_at(k)).len() >= 2
            })
            .collect();
        let kinds = |k: usize| {
            differences(&self.fx.state_at(k - 1), &self.fx.state_at(k))
                .into_iter()
                .map(|(kind, _)| kind)
                .collect::<BTreeSet<_>>()
                .len()
        };
        *candidates
            .iter()
            .find(|&&k| kinds(k) >= 2)
            .or(candidates.first())
            .expect("a commit that changes two keys in the middle of the history")
    }

    /// What the Deno CLI reads under `["item"]` over KV Connect now.
    fn deno_reads(&self) -> Value {
        let out = run_deno(
            "deno_restore.ts",
            &[&self.serve.kv_url(), "list", r#"["item"]"#],
            self.tmp.path(),
            DENO_TIMEOUT,
        );
        assert!(
            out.status.is_some_and(|s| s.success()),
            "{}",
            out.describe()
        );
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }
}

/// The keys whose records differ between two states, in key order, with
/// the kind of difference a diff names.
fn differences<'m>(
    a: &'m BTreeMap<Vec<u8>, Rec>,
    b: &'m BTreeMap<Vec<u8>, Rec>,
) -> Vec<(&'static str, &'m Vec<u8>)> {
    let gone_or_changed = a.iter().filter_map(|(k, r)| match b.get(k) {
        None => Some(("removed", k)),
        Some(now) => (now != r).then_some(("changed", k)),
    });
    let added = b
        .keys()
        .filter(|k| !a.contains_key(*k))
        .map(|k| ("added", k));
    let mut all: Vec<_> = gone_or_changed.chain(added).collect();
    all.sort_by_key(|&(_, k)| k);
    all
}

/// A key as the page's `data-key` (`JSON.stringify(key)`) holds it.
fn key_json(key: &[u8]) -> Value {
    let n = export_entries::item_number(key);
    // Whole numbers as JSON integers, as JavaScript prints them (compared
    // as doubles either way; this only reads better in a message).
    if n.fract() == 0.0 && n.abs() < 1e15 {
        json!(["item", n as i64])
    } else {
        json!(["item", n])
    }
}

/// The decoded value of a record, as the API and the page show it.
fn decoded(key: &[u8], rec: &Rec) -> Value {
    export_entries::entry(key, rec)["value"].clone()
}

/// One side of a diff row as the test reads it from the page: the text of
/// its `code.value`, or of the cell when it has none.
#[derive(Debug)]
enum Cell {
    Value(String),
    NoValue(String),
    Missing,
}

fn cell(v: &Value) -> Cell {
    if let Some(t) = v["value"].as_str() {
        Cell::Value(t.to_string())
    } else if let Some(t) = v["text"].as_str() {
        Cell::NoValue(t.to_string())
    } else {
        Cell::Missing
    }
}

/// Whether a cell shows `want` (`None`: the key is absent on that side).
fn cell_shows(c: &Cell, want: Option<&Value>) -> Result<(), String> {
    match (c, want) {
        (Cell::Value(text), Some(w)) => {
            let got: Value = serde_json::from_str(text)
                .map_err(|e| format!("code.value {text:?} is not JSON ({e})"))?;
            if export_entries::same(&got, w) {
                Ok(())
            } else {
                Err(format!("code.value {text} but the fixture holds {w}"))
            }
        }
        (Cell::NoValue(text), None) if text.contains("(absent)") => Ok(()),
        (c, w) => Err(format!("cell {c:?} but the fixture holds {w:?}")),
    }
}

/// The `tr.change` rows of `#diff`, read in one script.
fn diff_rows(b: &Browser) -> Vec<Value> {
    let rows = b.js(
        "return [...document.querySelectorAll('#diff tbody tr.change')].map(tr => {
           const side = c => {
             const td = tr.querySelector('td.' + c);
             if (!td) return {};
             const code = td.querySelector('code.value');
             return code ? {value: code.textContent} : {text: td.textContent.trim()};
           };
           return {kind: tr.dataset.kind, key: tr.dataset.key,
                   before: side('before'), after: side('after')};
         });",
        vec![],
    );
    rows.as_array().cloned().unwrap_or_default()
}

/// Checks the diff panel against the fixture's difference between two
/// states, restricted to the keys `keep` accepts: `#diff-summary`'s
/// numbers and every `tr.change` (key, kind, both values).
fn check_diff(
    b: &Browser,
    from: &BTreeMap<Vec<u8>, Rec>,
    to: &BTreeMap<Vec<u8>, Rec>,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<usize, String> {
    let want: Vec<(&str, &Vec<u8>)> = differences(from, to)
        .into_iter()
        .filter(|(_, k)| keep(k))
        .collect();
    let n = |kind: &str| want.iter().filter(|(k, _)| *k == kind).count();
    let summary = format!(
        "{} keys differ: {} added, {} removed, {} changed",
        want.len(),
        n("added"),
        n("removed"),
        n("changed")
    );
    let shown = b.text("#diff-summary").unwrap_or_default();
    if shown != summary {
        return Err(format!("#diff-summary reads {shown:?}, want {summary:?}"));
    }
    let rows = diff_rows(b);
    if rows.len() != want.len() {
        return Err(format!(
            "{} tr.change rows, want {} ({summary}): {rows:?}",
            rows.len(),
            want.len()
        ));
    }
    for (row, (kind, key)) in rows.iter().zip(&want) {
        let data_key: Value = serde_json::from_str(row["key"].as_str().unwrap_or("null"))
            .map_err(|e| format!("data-key {} is not JSON: {e}", row["key"]))?;
        let want_key = key_json(key);
        if !export_entries::same(&data_key, &want_key) {
            return Err(format!(
                "row data-key {data_key}, want {want_key} (rows in key order)"
            ));
        }
        if row["kind"] != *kind {
            return Err(format!(
                "{want_key}: data-kind {}, want {kind}",
                row["kind"]
            ));
        }
        let before = from.get(*key).map(|r| decoded(key, r));
        let after = to.get(*key).map(|r| decoded(key, r));
        cell_shows(&cell(&row["before"]), before.as_ref())
            .map_err(|e| format!("{want_key} td.before: {e}"))?;
        cell_shows(&cell(&row["after"]), after.as_ref())
            .map_err(|e| format!("{want_key} td.after: {e}"))?;
    }
    Ok(want.len())
}

/// The `tr.commit` rows of `#commits`: versionstamp, previous, time ms,
/// the cells' texts, selected.
fn commit_rows(b: &Browser) -> Vec<Value> {
    b.js(
        "return [...document.querySelectorAll('#commits tbody tr.commit')].map(tr => ({
           vs: tr.dataset.versionstamp, previous: tr.dataset.previous,
           time_ms: Number(tr.dataset.timeMs),
           cells: [...tr.cells].map(td => td.textContent.trim()),
           selected: tr.getAttribute('aria-selected') === 'true' && tr.classList.contains('selected'),
         }));",
        vec![],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
}

fn row_vs(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["vs"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Checks every commit row against the fixture: a known point (the
/// initial point is not one) with its time and previous point.
fn check_commit_rows(s: &Served, rows: &[Value]) -> Result<(), String> {
    for r in rows {
        let vs = r["vs"].as_str().unwrap_or_default();
        let Some(&(i, _, t)) = s.points.iter().find(|p| p.1 == vs) else {
            return Err(format!(
                "a tr.commit row for {vs}, not a point of the fixture"
            ));
        };
        if r["time_ms"] != json!(t) {
            return Err(format!(
                "{vs}: data-time-ms {}, the fixture's {t}",
                r["time_ms"]
            ));
        }
        if r["previous"] != s.previous_vs(i).as_str() {
            return Err(format!(
                "{vs}: data-previous {}, want {}",
                r["previous"],
                s.previous_vs(i)
            ));
        }
    }
    Ok(())
}

/// Selector of the commit row of `vs`.
fn commit_row(vs: &str) -> String {
    format!("#commits tbody tr.commit[data-versionstamp=\"{vs}\"]")
}

/// What the Deno client script prints for the keys of `state`: `[key,
/// value]` pairs in key order, values tagged (`{"bigint"}`, `{"u64"}`,
/// `{"bytes": [..]}`) as deno_restore.ts writes them.
fn deno_view(state: &BTreeMap<Vec<u8>, Rec>) -> Vec<Value> {
    fn untag(v: &Value) -> Value {
        match v {
            Value::Object(m) if m.get("$type") == Some(&json!("bigint")) => {
                json!({"bigint": m["value"]})
            }
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), untag(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(untag).collect()),
            v => v.clone(),
        }
    }
    state
        .iter()
        .map(|(k, r)| {
            let value = match r.encoding {
                1 => untag(&decoded(k, r)),
                2 => {
                    json!({"u64": u64::from_le_bytes(r.value[..8].try_into().unwrap()).to_string()})
                }
                3 => json!({"bytes": r.value}),
                n => panic!("encoding {n}"),
            };
            json!([key_json(k), value])
        })
        .collect()
}

fn assert_deno_reads(s: &Served, commit: usize, label: &str) {
    let got = s.deno_reads();
    let got = got.as_array().expect("a JSON array of [key, value]");
    let want = deno_view(&s.fx.state_at(commit));
    export_entries::assert_entries(got, &want, label);
}

fn time_rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Opens the confirmation of a checkout with `button`, checks it names
/// `target` and says each of `phrases`, and confirms it.
fn confirm_checkout(b: &mut Browser, button: &str, target: &str, phrases: &[String], step: &str) {
    b.click(button);
    b.wait_js(
        "const d = document.querySelector('dialog#confirm'); return !!d && d.open;",
        "dialog#confirm to open",
        |v| v == true,
    );
    b.wait_text_until(
        "#confirm-text",
        &format!("to name {target} and say {phrases:?}"),
        |t| t.contains(target) && phrases.iter().all(|p| t.contains(p.as_str())),
    );
    b.shot(step);
    b.click("#confirm-ok");
    b.wait_js(
        "const d = document.querySelector('dialog#confirm'); return !!d && !d.open;",
        "dialog#confirm to close after #confirm-ok",
        |v| v == true,
    );
}

/// A served fixture, the commit the tests study, and a browser logged in
/// to its console with the admin token (no checks but that the app
/// shows): for the tests of one panel.
fn logged_in(test: &str) -> (Served, Browser, usize) {
    let s = Served::start(SEED);
    let b = Browser::start(test);
    let k = s.pick_commit();
    b.goto(&s.console_url());
    b.fill("#login-token", ADMIN_TOKEN);
    b.click("#login-submit");
    b.wait_visible("main#app", true);
    b.wait_text("#status-latest", &s.newest());
    (s, b, k)
}

/// Types commit `k`'s time into `#find` and waits until its row is listed
/// with the fixture's number of mutations; returns the rows.
fn find_commit(s: &Served, b: &Browser, k: usize) -> Vec<Value> {
    b.fill("#find", &time_rfc3339(s.time_ms(k)));
    b.click("#find-go");
    let k_vs = s.vs(k);
    let mutations = s.fx.commits[k].muts.len().to_string();
    let rows = b.wait_for(&format!("#find to list commit {k_vs}"), |b| {
        let rows = commit_rows(b);
        match rows.iter().find(|r| r["vs"] == k_vs.as_str()) {
            Some(r) if r["cells"][2] == mutations.as_str() => Ok(rows),
            Some(r) => Err(format!(
                "its row's cells {}, want mutations {mutations} in the third",
                r["cells"]
            )),
            None => Err(format!("no row {k_vs} in {:?}", row_vs(&rows))),
        }
    });
    check_commit_rows(s, &rows).unwrap();
    rows
}

/// Clicks the commit row of `vs` and waits until it is selected.
fn select_commit(b: &Browser, vs: &str) {
    let row = commit_row(vs);
    b.click(&row);
    b.wait_js(
        &format!(
            "const r = document.querySelector('{}'); return !!r && \
             r.getAttribute('aria-selected') === 'true' && r.classList.contains('selected');",
            row.replace('"', "\\\"")
        ),
        &format!("{vs}'s row to be selected (aria-selected=true, .selected)"),
        |v| v == true,
    );
}

/// The page broke none of its own rules: no uncaught exception, no
/// Content-Security-Policy violation in its console.
fn assert_clean_console(b: &mut Browser) {
    let console = b.console();
    let broken: Vec<&Value> = console
        .iter()
        .filter(|e| {
            let m = e["message"].as_str().unwrap_or_default();
            m.contains("Uncaught")
                || m.contains("Content Security Policy")
                || m.contains("Refused to")
        })
        .collect();
    assert!(broken.is_empty(), "the page's console: {broken:#?}");
    println!("screenshots in {}", b.screenshots().display());
}

#[test]
fn an_operator_finds_a_bad_deploy_reads_its_diff_checks_out_before_it_and_goes_back() {
    let s = Served::start(SEED);
    let mut b = Browser::start("console_flow");
    let newest = s.newest();
    let k = s.pick_commit();
    let k_vs = s.vs(k);
    let prev_vs = s.previous_vs(k);

    // 1. Login: only the form until the right token is given.
    b.goto(&s.console_url());
    b.wait_visible("form#login", true);
    assert!(
        !b.visible("main#app"),
        "main#app is shown before logging in"
    );
    let input = b.js(
        "const i = document.querySelector('form#login input#login-token');
         return i && [i.type, i.getAttribute('autocomplete')];",
        vec![],
    );
    assert_eq!(
        input,
        json!(["password", "current-password"]),
        "input#login-token"
    );
    b.shot("login-form");
    b.fill("#login-token", "not-the-admin-token");
    b.click("#login-submit");
    b.wait_text_until("#login-error", "to say wrong token", |t| {
        t.to_lowercase().contains("wrong token")
    });
    assert!(
        b.visible("form#login") && !b.visible("main#app"),
        "a wrong token keeps the form"
    );
    b.shot("wrong-token");
    b.fill("#login-token", ADMIN_TOKEN);
    b.click("#login-submit");
    b.wait_visible("main#app", true);
    b.wait_visible("form#login", false);
    b.wait_text("#status-mode", "following");
    b.wait_text("#status-latest", &newest);
    b.wait_text("#status-visible", &newest);
    let storage = b.js(
        "return [location.href, sessionStorage.getItem('kvreplica.adminToken'), localStorage.length];",
        vec![],
    );
    assert!(
        !storage[0].as_str().unwrap().contains(ADMIN_TOKEN),
        "the token is in the URL: {storage}"
    );
    assert_eq!(
        storage[1], ADMIN_TOKEN,
        "sessionStorage kvreplica.adminToken"
    );
    assert_eq!(storage[2], 0, "localStorage holds nothing");
    assert!(
        !s.serve.log().contains(ADMIN_TOKEN),
        "serve logged the admin token"
    );
    b.shot("logged-in");

    // 2. A time typed into #find lists the commits at it, K among them
    // with its number of mutations (the timeline's own ways to get there
    // are the next test's).
    find_commit(&s, &b, k);
    b.shot("find-time");

    // 3. K's diff: every change, then under a prefix, then a range.
    select_commit(&b, &k_vs);
    let (before_k, at_k) = (s.fx.state_at(k - 1), s.fx.state_at(k));
    let changed = b.wait_for("K's diff to equal the fixture's", |b| {
        check_diff(b, &before_k, &at_k, |_| true)
    });
    assert!(changed >= 2);
    b.shot("diff-commit");
    let one = differences(&before_k, &at_k)[1].1.clone();
    let prefix = key_json(&one).to_string();
    b.fill("#diff-prefix", &prefix);
    b.click("#diff-prefix-apply");
    b.wait_for(&format!("the diff under {prefix}"), |b| {
        check_diff(b, &before_k, &at_k, |key| key == one.as_slice())
    });
    b.shot("diff-prefix");
    b.fill("#diff-prefix", "");
    b.click("#diff-prefix-apply");
    b.wait_for("the whole diff again", |b| {
        check_diff(b, &before_k, &at_k, |_| true)
    });
    let k3_vs = s.vs(k + 3);
    let row = b.find(&commit_row(&k3_vs));
    b.shift_click_element(&row, "K+3's row");
    let at_k3 = s.fx.state_at(k + 3);
    b.wait_for("the diff of commits K..K+3", |b| {
        check_diff(b, &before_k, &at_k3, |_| true)
    });
    b.shot("diff-range");

    // 4. Browse the state at the selected commit, K, page after page.
    select_commit(&b, &k_vs);
    b.wait_for("K's diff again", |b| {
        check_diff(b, &before_k, &at_k, |_| true)
    });
    b.fill("#browse-prefix", r#"["item"]"#);
    b.select("select#browse-at", "selected");
    b.click("#browse-go");
    let want_entries: Vec<(Value, Value)> = at_k
        .iter()
        .map(|(key, r)| (key_json(key), decoded(key, r)))
        .collect();
    let entries = browse_all(&b, want_entries.len());
    compare_entries(&entries, &want_entries).unwrap();
    b.shot("browse");

    // 5. Check out the point before the bad deploy: readers see it.
    select_commit(&b, &prev_vs);
    b.wait_js(
        "const b = document.querySelector('#checkout-selected'); return !!b && !b.disabled;",
        "#checkout-selected enabled once a commit is selected",
        |v| v == true,
    );
    // What it tells before: how far back, and how many keys readers
    // will see differ (from the newest state they see now).
    let behind = s.points.iter().filter(|p| p.0 > k - 1).count();
    let newest_state = s.fx.state_at(s.fx.last_initial);
    let differ = differences(&newest_state, &before_k).len();
    let phrases = [
        format!("{behind} commits before the newest"),
        format!("{differ} keys differ"),
    ];
    confirm_checkout(
        &mut b,
        "#checkout-selected",
        &prev_vs,
        &phrases,
        "confirm-checkout",
    );
    b.wait_text("#status-mode", "pinned");
    b.wait_text("#status-visible", &prev_vs);
    b.wait_text_until(
        "#act-result",
        &format!("to report the checkout of {prev_vs}"),
        |t| t.contains(&prev_vs),
    );
    b.shot("checked-out");
    let (status, cur) = s.serve.admin(Method::Get, "/pitr/current", Value::Null);
    assert_eq!(
        (status, cur["versionstamp"].as_str()),
        (200, Some(prev_vs.as_str())),
        "{cur}"
    );
    assert_deno_reads(&s, k - 1, "the Deno CLI after the console's checkout");

    // 5b. Plan restoring that point into a primary the bad deploy
    // wrote: the plan's numbers are the fixture's and POST /restore's,
    // and nothing is written.
    restore_plan(&s, &mut b, k - 1);

    // 6. Another operator checks out another point: the page follows.
    let other = s.vs(k + 1);
    let (status, out) = s.serve.admin(
        Method::Post,
        "/pitr/checkout",
        json!({"versionstamp": other}),
    );
    assert_eq!(status, 200, "{out}");
    b.wait_text("#status-visible", &other);
    b.wait_text("#status-mode", "pinned");
    b.shot("other-operator");

    // 7. Back to latest.
    confirm_checkout(&mut b, "#checkout-latest", &newest, &[], "confirm-latest");
    b.wait_text("#status-mode", "following");
    b.wait_text("#status-visible", &newest);
    b.shot("latest");
    assert_deno_reads(
        &s,
        s.fx.last_initial,
        "the Deno CLI after going back to latest",
    );

    // 8. Logout.
    b.click("#logout");
    b.wait_visible("form#login", true);
    b.wait_visible("main#app", false);
    let token = b.js(
        "return sessionStorage.getItem('kvreplica.adminToken');",
        vec![],
    );
    assert_eq!(
        token,
        Value::Null,
        "sessionStorage still holds the token after #logout"
    );
    b.shot("logged-out");
    assert_clean_console(&mut b);
}

#[test]
fn timeline_bars_count_the_fixtures_commits_and_a_click_or_the_keyboard_lists_them() {
    let (s, mut b, k) = logged_in("console_timeline");

    // Every bar of the whole history counts the fixture's points in its
    // interval.
    let bars = b.js(
        "return [...document.querySelectorAll('svg#timeline rect.bar')].map(r =>
           [Number(r.dataset.startMs), Number(r.dataset.endMs), Number(r.dataset.count)]);",
        vec![],
    );
    let bars: Vec<(u64, u64, usize)> = bars
        .as_array()
        .expect("rect.bar list")
        .iter()
        .map(|b| {
            (
                b[0].as_u64().unwrap(),
                b[1].as_u64().unwrap(),
                b[2].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert!(!bars.is_empty(), "svg#timeline has no rect.bar");
    let in_range = |(lo, hi): (u64, u64)| -> Vec<&(usize, String, u64)> {
        s.points.iter().filter(|p| lo <= p.2 && p.2 < hi).collect()
    };
    for &(lo, hi, count) in &bars {
        assert_eq!(
            count,
            in_range((lo, hi)).len(),
            "rect.bar [{lo}, {hi}) data-count against the fixture's points"
        );
    }
    assert_eq!(
        bars.iter().map(|b| b.2).sum::<usize>(),
        s.points.len(),
        "the bars of the whole history count every point"
    );
    b.shot("timeline");

    // A click on the bar holding K's time lists the commits of its
    // interval: its newest commit and (the server's default count, 10)
    // those before it.
    let (lo, hi, _) = *bars
        .iter()
        .find(|&&(lo, hi, _)| lo <= s.time_ms(k) && s.time_ms(k) < hi)
        .expect("a rect.bar holds commit K's time");
    b.click(&format!("svg#timeline rect.bar[data-start-ms=\"{lo}\"]"));
    let in_bar = in_range((lo, hi));
    let want: Vec<String> = in_bar[in_bar.len().saturating_sub(10)..]
        .iter()
        .map(|p| p.1.clone())
        .collect();
    let listed = b.wait_for(
        &format!("a click on rect.bar [{lo}, {hi}) to list its commits"),
        |b| {
            let rows = commit_rows(b);
            let vs = row_vs(&rows);
            match want.iter().find(|w| !vs.contains(w)) {
                None => Ok(rows),
                Some(w) => Err(format!("{w} missing from {vs:?}")),
            }
        },
    );
    check_commit_rows(&s, &listed).unwrap();
    b.shot("timeline-bar");

    // The keyboard: ← and Enter on the timeline select the bar before.
    let newest_listed = |rows: &[Value]| rows.iter().filter_map(|r| r["time_ms"].as_u64()).max();
    let before = newest_listed(&listed);
    let prev_bar_last = s.points.iter().rfind(|p| p.2 < lo).unwrap().1.clone();
    b.focus("svg#timeline");
    b.press(Key::Left);
    b.press(Key::Enter);
    let listed = b.wait_for("← Enter on svg#timeline to list the bar before", |b| {
        let rows = commit_rows(b);
        let moved = newest_listed(&rows) < before;
        if moved && row_vs(&rows).contains(&prev_bar_last) {
            Ok(rows)
        } else {
            Err(format!(
                "newest listed {:?} (was {before:?}), rows {:?}",
                newest_listed(&rows),
                row_vs(&rows)
            ))
        }
    });
    check_commit_rows(&s, &listed).unwrap();
    b.shot("timeline-keyboard");

    // The oldest point: found by its versionstamp, marked, and its diff
    // is refused with the reason (the state before it is not
    // recoverable) rather than attempted.
    let oldest = s.points[0].1.clone();
    b.fill("#find", &oldest);
    b.click("#find-go");
    let rows = b.wait_for("#find to list the oldest point", |b| {
        let rows = commit_rows(b);
        if row_vs(&rows).first() == Some(&oldest) {
            Ok(rows)
        } else {
            Err(format!("rows {:?}", row_vs(&rows)))
        }
    });
    check_commit_rows(&s, &rows).unwrap();
    assert_eq!(rows[0]["previous"], "", "the oldest point has no previous");
    assert!(
        rows[0]["cells"][3]
            .as_str()
            .unwrap_or_default()
            .contains("oldest"),
        "the oldest point is marked: {}",
        rows[0]["cells"]
    );
    select_commit(&b, &oldest);
    b.wait_text_until("#diff-title", "the oldest point's reason", |t| {
        t.contains("oldest recoverable point") && t.contains("not recoverable")
    });
    assert!(
        b.find_all("tr.change").is_empty(),
        "no diff rows for the oldest point"
    );
    b.shot("timeline-oldest");
    assert_clean_console(&mut b);
}

#[test]
fn a_narrow_window_cuts_nothing_off_and_the_keyboard_reaches_every_action() {
    let (s, mut b, k) = logged_in("console_narrow");
    // Full panels: K listed, selected, its diff shown.
    find_commit(&s, &b, k);
    select_commit(&b, &s.vs(k));
    let (before_k, at_k) = (s.fx.state_at(k - 1), s.fx.state_at(k));
    b.wait_for("K's diff", |b| check_diff(b, &before_k, &at_k, |_| true));

    b.set_window(420, 900);
    b.wait_js(
        "return window.innerWidth <= 420;",
        "the window to narrow",
        |v| v == true,
    );
    b.shot("narrow");
    let widths = b.js(
        "return [document.documentElement.scrollWidth, window.innerWidth];",
        vec![],
    );
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the page is wider than a 420 px window: (documentElement.scrollWidth, innerWidth) = {widths}"
    );

    // Tab from the top reaches the act panel's buttons.
    b.js(
        "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);",
        vec![],
    );
    let mut seen = Vec::new();
    for _ in 0..300 {
        b.press(Key::Tab);
        let f = b.focused();
        if f.starts_with("button#checkout-latest") {
            break;
        }
        seen.push(f);
    }
    assert!(
        b.focused().starts_with("button#checkout-latest"),
        "Tab never reached #checkout-latest; focus went through {seen:?}"
    );
    b.shot("narrow-keyboard");
    assert_clean_console(&mut b);
}

/// Every `tr.entry` row of the browse panel once `#browse-more` has
/// loaded every page (at most 20), or `want` rows are shown.
fn browse_all(b: &Browser, want: usize) -> Vec<Value> {
    for _ in 0..20 {
        let rows = b.wait_for("browse rows", |b| {
            let rows = browse_rows(b);
            if rows.is_empty() {
                Err("no tr.entry".into())
            } else {
                Ok(rows)
            }
        });
        if !b.visible("#browse-more") || rows.len() >= want {
            return rows;
        }
        let n = rows.len();
        b.click("#browse-more");
        b.wait_for("#browse-more to add rows", |b| {
            let now = browse_rows(b).len();
            if now > n {
                Ok(())
            } else {
                Err(format!("{now} rows"))
            }
        });
    }
    panic!("#browse-more still shown after 20 pages");
}

/// The restore panel's dry run of the `["item"]` prefix at the selected
/// commit `point` against a real denokv primary holding the newest state
/// (written by `POST /restore`, which the console itself never applies).
fn restore_plan(s: &Served, b: &mut Browser, point: usize) {
    let primary = Denokv::start(s.tmp.path(), ACCESS_TOKEN);
    let body = |at: &str, apply: bool| {
        json!({"to": primary.url, "token": ACCESS_TOKEN, "at": at,
               "prefix": [r#"["item"]"#], "apply": apply})
    };
    let (status, out) = s
        .serve
        .admin(Method::Post, "/restore", body("latest", true));
    assert_eq!(status, 200, "seeding the primary: {out}");
    let seeded = primary.rows();
    // The plan by content: the primary holds the newest state's values.
    let content = |r: &Rec| (r.value.clone(), r.encoding, r.expire_at_ms);
    let (newest, then) = (s.fx.state_at(s.fx.last_initial), s.fx.state_at(point));
    let set = then
        .iter()
        .filter(|(k, r)| newest.get(*k).map(content) != Some(content(r)))
        .count();
    let delete = newest.keys().filter(|k| !then.contains_key(*k)).count();
    let unchanged = then.len() - set;
    let vs = s.vs(point);
    let (status, api) = s.serve.admin(Method::Post, "/restore", body(&vs, false));
    assert_eq!(status, 200, "{api}");
    assert_eq!(
        api["plan"],
        json!({"set": set, "delete": delete, "unchanged": unchanged}),
        "POST /restore's plan against the fixture"
    );

    b.wait_text_until("#restore-at", &format!("to name {vs}"), |t| t.contains(&vs));
    b.fill("#restore-to", &primary.url);
    b.fill("#restore-token", ACCESS_TOKEN);
    b.fill("#restore-prefix", r#"["item"]"#);
    b.click("#restore-plan");
    let summary = format!("Plan: {set} to set, {delete} to delete, {unchanged} unchanged");
    let shown = b.wait_text_until("#restore-result", &format!("to say {summary:?}"), |t| {
        t.contains(&summary)
    });
    assert!(
        shown.contains("kvreplica restore") && shown.contains("--apply") && shown.contains(&vs),
        "#restore-result shows no command to apply the plan: {shown}"
    );
    assert!(
        !shown.contains(ACCESS_TOKEN),
        "#restore-result shows the primary's token"
    );
    let stored = b.js(
        "return JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage)]);",
        vec![],
    );
    assert!(
        !stored.as_str().unwrap_or_default().contains(ACCESS_TOKEN),
        "the primary's token was stored: {stored}"
    );
    b.js(
        "document.querySelector('#restore-result').scrollIntoView({block: 'center'});",
        vec![],
    );
    b.shot("restore-plan");
    assert_eq!(primary.rows(), seeded, "a dry run wrote to the primary");
}

/// The `tr.entry` rows of `#browse`: data-key and the `code.value` text.
fn browse_rows(b: &Browser) -> Vec<Value> {
    b.js(
        "return [...document.querySelectorAll('#browse tbody tr.entry')].map(tr => {
           const code = tr.querySelector('td.value code.value');
           return [tr.dataset.key, code ? code.textContent : null];
         });",
        vec![],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
}

fn compare_entries(rows: &[Value], want: &[(Value, Value)]) -> Result<(), String> {
    for (i, (row, (key, value))) in rows.iter().zip(want).enumerate() {
        let got_key: Value = serde_json::from_str(row[0].as_str().unwrap_or("null"))
            .map_err(|e| format!("row {i}: data-key {} ({e})", row[0]))?;
        if !export_entries::same(&got_key, key) {
            return Err(format!("row {i}: data-key {got_key}, want {key}"));
        }
        let text = row[1]
            .as_str()
            .ok_or_else(|| format!("{key}: no td.value code.value"))?;
        let got: Value =
            serde_json::from_str(text).map_err(|e| format!("{key}: {text:?} ({e})"))?;
        if !export_entries::same(&got, value) {
            return Err(format!(
                "{key}: code.value {text}, the fixture holds {value}"
            ));
        }
    }
    if rows.len() != want.len() {
        return Err(format!("{} tr.entry rows, want {}", rows.len(), want.len()));
    }
    Ok(())
}

#[test]
fn behind_a_proxy_under_a_path_the_console_works_and_addresses_only_that_path() {
    let s = Served::start(SEED);
    let proxy = PathProxy::start(&s.serve.admin_url(), "/kv-admin/");
    let mut b = Browser::start("console_under_a_path");
    let newest = s.newest();
    let k = s.pick_commit();
    let prev_vs = s.previous_vs(k);

    // `/kv-admin/console` redirects to the page under the same path.
    b.goto(&format!("{}console", proxy.url()));
    b.wait_visible("form#login", true);
    let path = b.js("return location.pathname;", vec![]);
    assert_eq!(path, "/kv-admin/console/", "where the redirect went");
    b.fill("#login-token", ADMIN_TOKEN);
    b.click("#login-submit");
    b.wait_visible("main#app", true);
    b.wait_text("#status-latest", &newest);
    b.wait_js(
        "return [...document.querySelectorAll('svg#timeline rect.bar')]
           .reduce((n, r) => n + Number(r.dataset.count), 0);",
        "the timeline's bars to count every point",
        |v| v.as_u64() == Some(s.points.len() as u64),
    );
    b.shot("timeline");

    // K's diff, a checkout of the point before it, and back to latest.
    find_commit(&s, &b, k);
    select_commit(&b, &s.vs(k));
    let (before_k, at_k) = (s.fx.state_at(k - 1), s.fx.state_at(k));
    b.wait_for("K's diff to equal the fixture's", |b| {
        check_diff(b, &before_k, &at_k, |_| true)
    });
    b.shot("diff");
    select_commit(&b, &prev_vs);
    confirm_checkout(
        &mut b,
        "#checkout-selected",
        &prev_vs,
        &[],
        "confirm-checkout",
    );
    b.wait_text("#status-mode", "pinned");
    b.wait_text("#status-visible", &prev_vs);
    assert_deno_reads(&s, k - 1, "the Deno CLI after a checkout through the proxy");
    confirm_checkout(&mut b, "#checkout-latest", &newest, &[], "confirm-latest");
    b.wait_text("#status-mode", "following");
    b.wait_text("#status-visible", &newest);
    b.shot("latest");

    assert_eq!(
        proxy.outside(),
        Vec::<String>::new(),
        "requests the page sent outside /kv-admin/"
    );
    assert!(proxy.forwarded() > 10, "{} requests", proxy.forwarded());
    assert_clean_console(&mut b);
}

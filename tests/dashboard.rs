//! The web dashboard in a real browser: headless Chromium, driven over the DevTools protocol,
//! signs in with a token by keyboard and shows what the API says of a real small platform (a
//! global and a regional control plane, an agent, a gateway): the service's health in its
//! region, its request figures and charts, the rollout of its second version, the regions on a
//! map, deployments, a live tail of the instance's output; an org token sees only its org.
//! Screenshots of each page are saved under `target/test-output/dashboard/`.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::browser::{chromium_installed, output_dir, Browser};
use support::{agent, answers, gateway, hello_in_fra, through, Deployed, RegionalPlane};
use support::{HELLO, HELLO_HOST};

/// How long figures and states may take to show (a 10 s window, reports every 1-2 s).
const DEADLINE: Duration = Duration::from_secs(90);

/// The service's path in the API.
const HELLO_PATH: &str = "/v1/orgs/acme/apps/shop/services/hello";

/// `GET path` of the API with `token`, which must answer 200: its JSON body.
async fn api(base: &str, token: &str, path: &str) -> Value {
    let answer = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{path}");
    answer.json().await.unwrap()
}

/// Shows `hash` (`#/regions`) and waits until its page (`page`) has loaded its data.
async fn show(browser: &mut Browser, hash: &str, page: &str) {
    browser
        .eval(&format!("location.hash = {}", Value::from(hash)))
        .await;
    loaded(browser, page).await;
}

/// Waits until `page` has loaded its data (its first load, or one after a navigation).
async fn loaded(browser: &mut Browser, page: &str) {
    let ready = format!(
        "document.getElementById('main')?.dataset.page === '{page}' \
         && document.getElementById('main')?.dataset.loaded !== undefined"
    );
    browser.wait_for(&format!("the {page} page"), &ready).await;
}

/// Signs in with `token` as a person would: the page focuses the token field, the token is
/// typed and Enter pressed; then the page the address names (`page`) shows.
async fn sign_in(browser: &mut Browser, token: &str, page: &str) {
    browser
        .wait_for(
            "the sign-in form with its field focused",
            "document.getElementById('main')?.dataset.page === 'signin' \
             && document.activeElement && document.activeElement.id === 'token'",
        )
        .await;
    browser.type_text(token).await;
    browser.press("Enter").await;
    loaded(browser, page).await;
}

/// Signs out with the page's button, back to the sign-in form (the token forgotten).
async fn sign_out(browser: &mut Browser) {
    browser
        .eval("document.getElementById('signout').click()")
        .await;
    let gone = browser
        .wait_for(
            "the sign-in form after signing out",
            "document.getElementById('main')?.dataset.page === 'signin' \
             && sessionStorage.getItem('meridian.token') === null",
        )
        .await;
    assert_eq!(gone, true);
}

/// Each region of the service as the API's status says: name, state, healthy and desired.
fn status_regions(status: &Value) -> Vec<(String, String, u64, u64)> {
    status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["region"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
                r["healthy"].as_u64().unwrap_or(0),
                r["desired"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The same, as the services page shows it in the service's row.
const SERVICES_ROW: &str = "[...document.querySelectorAll('#services-table tbody \
    tr[data-service=\"acme/shop/hello\"] li[data-region]')].map(li => [li.dataset.region, \
    li.dataset.state, Number(li.dataset.healthy), Number(li.dataset.desired)])";

/// Each region's requests, open connections and p99 over the window, as the API says.
fn metrics_rows(metrics: &Value) -> Value {
    let rows: Vec<Value> = metrics["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let total = &r["total"];
            serde_json::json!([
                r["region"],
                total["served"]["requests"].to_string(),
                total["open_connections"].to_string(),
                total["served"]["latency_ms"]["p99"]
                    .as_f64()
                    .map_or(String::new(), |p| p.to_string()),
            ])
        })
        .collect();
    Value::Array(rows)
}

/// The same, as the service page's table holds them (`data-value` of each cell).
const METRICS_TABLE: &str = "[...document.querySelectorAll('#metrics-table tbody tr')].map(tr => \
    [tr.dataset.region].concat(['requests', 'connections', 'p99'].map(f => \
    tr.querySelector(`[data-field=\"${f}\"]`).dataset.value)))";

/// Reloads the service page until the API answered the same figures just before and just
/// after the page read them (figures only grow, so then the page read those); the figures.
async fn stable_service_figures(browser: &mut Browser, base: &str, token: &str) -> Value {
    let path = format!("{HELLO_PATH}/metrics?window=5m&step=10s");
    let end = Instant::now() + DEADLINE;
    loop {
        let before = metrics_rows(&api(base, token, &path).await);
        // The old document is marked, so that its page is not taken for the new one's.
        browser
            .eval("window.reloading = true; location.reload()")
            .await;
        browser
            .wait_for("the reloaded document", "window.reloading === undefined")
            .await;
        loaded(browser, "service").await;
        let shown = browser.eval(METRICS_TABLE).await;
        let after = metrics_rows(&api(base, token, &path).await);
        if before == after {
            assert_eq!(shown, after, "the page's figures are the API's");
            return after;
        }
        assert!(Instant::now() < end, "the figures never held still");
    }
}

/// Presses Tab until the focused element's text or id is `wanted`, at most `presses` times;
/// the elements passed, in order.
async fn tab_to(browser: &mut Browser, wanted: &str, presses: usize) -> Vec<String> {
    let mut passed = Vec::new();
    for _ in 0..presses {
        browser.press("Tab").await;
        let focused = browser
            .eval("document.activeElement.id || document.activeElement.textContent.trim()")
            .await;
        let focused = focused.as_str().unwrap_or_default().to_owned();
        passed.push(focused.clone());
        if focused == wanted {
            return passed;
        }
    }
    panic!("Tab never reached {wanted}: {passed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_platform_as_the_api_does_in_a_real_browser() {
    if !chromium_installed() {
        return;
    }
    let out = output_dir("dashboard");
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), &hello_in_fra(1, HELLO, "v1", "/healthz", ""));
    let (base, admin) = (platform.global.api.clone(), platform.token.clone());
    // A second region that nothing runs in, far away: the map spans both.
    platform
        .cli
        .ok(&["region", "add", "sin", "--lat", "1.35", "--lon", "103.82"]);
    let region = RegionalPlane::start(&platform.global, &admin, "fra", Some("127.0.0.1:0"));
    let _node = agent(&region, "one", "127.0.80.100", dir.path());
    let (_gateway, address) = gateway(&region, dir.path()).await;
    answers(&address, HELLO_HOST, "/", "v1").await;

    // A second version rolls out, so that the pages have a rollout to show.
    platform.deploy(&hello_in_fra(1, HELLO, "v2", "/healthz", ""));
    platform
        .status_until("hello", "rolled out to version 2", |row| {
            row["version"] == 2
                && row["state"] == "running"
                && row["rollout"]["phase"] == "succeeded"
        })
        .await;
    answers(&address, HELLO_HOST, "/", "v2").await;
    for path in ["/", "/", "/", "/healthz", "/nope", "/nope"] {
        through(&address, HELLO_HOST, path).await;
    }
    // Wait until the regions reported those requests.
    let metrics_path = format!("{HELLO_PATH}/metrics?window=5m&step=10s");
    let end = Instant::now() + DEADLINE;
    loop {
        let metrics = api(&base, &admin, &metrics_path).await;
        let requests = metrics["regions"][0]["total"]["served"]["requests"]
            .as_u64()
            .unwrap_or(0);
        if requests >= 6 {
            break;
        }
        assert!(Instant::now() < end, "the requests never showed: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut browser = Browser::start(1280, 900, &out.join("chromium.log")).await;
    browser.open(&format!("{base}/ui/")).await;
    browser
        .wait_for(
            "the sign-in form",
            "document.getElementById('main')?.dataset.page === 'signin'",
        )
        .await;
    browser.screenshot(&out.join("signin.png")).await;

    // A token the API refuses is said so, and nothing is shown.
    browser.type_text("mrd_not-a-token").await;
    browser.press("Enter").await;
    let refused = browser
        .wait_for(
            "the refusal",
            "document.getElementById('signin-error').textContent",
        )
        .await;
    assert!(refused.as_str().unwrap().contains("refused"), "{refused}");
    assert_eq!(
        browser.eval("document.getElementById('nav').hidden").await,
        true
    );
    browser
        .eval("document.getElementById('token').value = ''")
        .await;

    // The admin token: the services page shows the service's regions as its status says.
    sign_in(&mut browser, &admin, "services").await;
    assert_eq!(browser.eval("location.hash").await, "#/services");
    let who = browser
        .eval("document.getElementById('who').textContent")
        .await;
    assert_eq!(who, "Admin token: every org");
    let status = api(&base, &admin, &format!("{HELLO_PATH}/status")).await;
    let shown: Vec<(String, String, u64, u64)> =
        serde_json::from_value(browser.eval(SERVICES_ROW).await).unwrap();
    assert_eq!(shown, status_regions(&status));
    assert_eq!(
        shown,
        [("fra".to_owned(), "running".to_owned(), 1, 1)],
        "{status}"
    );
    let version = browser
        .eval("document.querySelector('[data-service=\"acme/shop/hello\"] [data-field=version]').textContent")
        .await;
    assert_eq!(version, "v2");
    browser.screenshot(&out.join("services.png")).await;

    // The service's page: its figures are the API's, charted per region; its rollout and
    // versions are listed.
    show(&mut browser, "#/services/acme/shop/hello", "service").await;
    let figures = stable_service_figures(&mut browser, &base, &admin).await;
    assert_eq!(figures[0][0], "fra", "{figures}");
    let requests: u64 = figures[0][1].as_str().unwrap().parse().unwrap();
    assert!(requests >= 6, "{figures}");
    let lines = browser
        .eval("[...document.querySelectorAll('#chart-rps path.line')].map(p => p.getAttribute('d').length > 0)")
        .await;
    assert_eq!(lines, serde_json::json!([true]), "one line per region");
    let charts = browser
        .eval("document.querySelectorAll('figure.chart svg[role=img] desc').length")
        .await;
    assert_eq!(charts, 3);
    let healthy = browser
        .eval("document.querySelector('#health-table tr[data-region=fra] [data-field=healthy]').textContent")
        .await;
    assert_eq!(healthy, "1/1");
    let rollout = browser
        .eval("document.querySelector('#rollouts-table tr[data-region=fra][data-version=\"2\"] [data-state]').dataset.state")
        .await;
    assert_eq!(rollout, "succeeded");
    let versions = browser
        .eval("[...document.querySelectorAll('#deployments-table tbody tr')].map(tr => tr.dataset.version)")
        .await;
    assert_eq!(versions, serde_json::json!(["2", "1"]));
    browser.screenshot(&out.join("service.png")).await;

    // By keyboard: from the skip link, Tab walks the header in order, each stop with a
    // visible focus ring, and Enter on "Regions" opens the regions page, focus on its content.
    browser
        .eval("document.getElementById('skip').focus()")
        .await;
    let passed = tab_to(&mut browser, "Regions", 5).await;
    assert_eq!(passed, ["Meridian", "Services", "Regions"]);
    let ring = browser
        .eval("getComputedStyle(document.activeElement).outlineStyle")
        .await;
    assert_ne!(ring, "none", "the focused link shows it");
    browser.press("Enter").await;
    loaded(&mut browser, "regions").await;
    assert_eq!(browser.eval("document.activeElement.id").await, "main");
    assert_eq!(
        browser
            .eval("document.querySelector('nav a[aria-current=page]').textContent")
            .await,
        "Regions"
    );

    // Regions: fra reports with its one node; sin never did; both are on the map.
    let regions = browser
        .eval("[...document.querySelectorAll('#regions-table tbody tr')].map(tr => [tr.dataset.region, tr.dataset.state])")
        .await;
    assert_eq!(
        regions,
        serde_json::json!([["fra", "reporting"], ["sin", "no report"]])
    );
    let report = api(&base, &admin, "/v1/regions/fra/report").await;
    let nodes = browser
        .eval("document.querySelector('#regions-table tr[data-region=fra] [data-field=nodes]').textContent")
        .await;
    assert_eq!(nodes, report["report"]["nodes"].to_string());
    let markers = browser
        .eval("[...document.querySelectorAll('.map [data-region]')].map(m => m.dataset.region)")
        .await;
    assert_eq!(markers, serde_json::json!(["fra", "sin"]));
    browser.screenshot(&out.join("regions.png")).await;

    // Deployments: version 2 in fra, its rollout done.
    show(&mut browser, "#/deployments", "deployments").await;
    let row = browser
        .eval("(() => { const tr = document.querySelector('#deployments-table tr[data-service=\"acme/shop/hello\"][data-region=fra]'); \
               return [tr.children[1].textContent, tr.querySelector('.rollout').dataset.phase, tr.querySelector('progress').value]; })()")
        .await;
    assert_eq!(row, serde_json::json!(["v2", "succeeded", 100]));
    browser.screenshot(&out.join("deployments.png")).await;

    // Logs: the service page links to its live tail, which follows the instances' output and
    // shows a line the instance prints, tagged with its region, instance and stream.
    show(&mut browser, "#/services/acme/shop/hello", "service").await;
    let link = browser
        .eval("document.getElementById('logs-link').getAttribute('href')")
        .await;
    assert_eq!(link, "#/logs/acme/shop/hello");
    show(&mut browser, "#/logs/acme/shop/hello", "logs").await;
    browser
        .wait_for(
            "the tail following",
            "document.getElementById('log-status')?.dataset.state === 'following'",
        )
        .await;
    let printed = through(&address, HELLO_HOST, "/print?line=dashboard-tail-marker").await;
    assert_eq!(printed, (200, "printed\n".to_owned()));
    let line = browser
        .wait_for(
            "the printed line in the tail",
            "(() => { const l = [...document.querySelectorAll('#log-tail .log-line')]\
               .find(l => l.querySelector('.text').textContent === 'dashboard-tail-marker'); \
             return l ? [l.dataset.region, l.dataset.instance, l.dataset.stream] : null; })()",
        )
        .await;
    // The instance of version 2 (the rollout replaced the first).
    assert_eq!(line, serde_json::json!(["fra", "hello-1", "stdout"]));
    browser.screenshot(&out.join("logs.png")).await;

    // Another org's token sees none of acme's services, and no region through them.
    platform.cli.ok(&["org", "create", "other"]);
    let other = platform.cli.for_new_org_token("other");
    let acme = platform.cli.for_new_org_token("acme");
    // Signed in again, the page is where it was.
    sign_out(&mut browser).await;
    sign_in(&mut browser, &other.token, "logs").await;
    show(&mut browser, "#/services", "services").await;
    assert_eq!(
        browser
            .eval("document.getElementById('who').textContent")
            .await,
        "Org token: other"
    );
    let empty = browser
        .eval("document.querySelector('main .empty-state')?.textContent ?? ''")
        .await;
    assert_eq!(empty, "No services are visible to this token.");
    show(&mut browser, "#/regions", "regions").await;
    let regions = browser
        .eval(
            "[...document.querySelectorAll('#regions-table tbody tr')].map(tr => tr.dataset.state)",
        )
        .await;
    assert_eq!(
        regions,
        serde_json::json!(["no services of yours", "no services of yours"])
    );
    browser.screenshot(&out.join("regions-other-org.png")).await;

    // acme's own token sees its service as the admin does.
    show(&mut browser, "#/services", "services").await;
    sign_out(&mut browser).await;
    sign_in(&mut browser, &acme.token, "services").await;
    let shown: Vec<(String, String, u64, u64)> =
        serde_json::from_value(browser.eval(SERVICES_ROW).await).unwrap();
    let status = api(&base, &acme.token, &format!("{HELLO_PATH}/status")).await;
    assert_eq!(shown, status_regions(&status));

    // Nothing went wrong in the page: no exception, no blocked resource or inline code (the
    // policy would say), no failed asset. The API's own refusals (the bad token's 401, the
    // never-reported region's 404) are the only errors the browser logged.
    let unexpected: Vec<&String> = browser
        .errors()
        .iter()
        .filter(|e| !(e.starts_with("network:") && e.contains("/v1/")))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");

    // The browser enforces the page's policy: inline code and another origin's image (on
    // loopback, where nothing listens) are refused, and said to be.
    browser
        .eval(
            "(() => { const s = document.createElement('script'); \
             s.textContent = 'window.injected = 1'; document.body.append(s); \
             const i = document.createElement('img'); i.src = 'http://127.0.0.9:9/x.png'; \
             document.body.append(i); })()",
        )
        .await;
    assert_eq!(browser.eval("window.injected === undefined").await, true);
    let end = Instant::now() + DEADLINE;
    while browser
        .errors()
        .iter()
        .filter(|e| e.contains("Content Security Policy"))
        .count()
        < 2
    {
        assert!(
            Instant::now() < end,
            "no violation reported: {:#?}",
            browser.errors()
        );
        browser.eval("0").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.close().await;
}

/// Imports the dashboard's module `name` in the page and evaluates `body` with it as `m`.
async fn with_module(browser: &mut Browser, name: &str, body: &str) -> Value {
    browser
        .eval(&format!(
            "(async () => {{ const digest = document.querySelector('link[rel=stylesheet]')\
             .getAttribute('href').split('/')[2]; \
             const m = await import(`/ui/${{digest}}/{name}`); {body} }})()"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_out_rollout_progress_charts_and_the_map_as_it_should() {
    if !chromium_installed() {
        return;
    }
    let out = output_dir("dashboard-parts");
    let dir = tempfile::tempdir().unwrap();
    let global = support::ControlPlane::start(dir.path());
    let mut browser = Browser::start(1024, 768, &out.join("chromium.log")).await;
    browser.open(&format!("{}/ui/", global.api)).await;
    browser
        .wait_for(
            "the sign-in form",
            "document.getElementById('main')?.dataset.page === 'signin'",
        )
        .await;

    // Rollouts: a canary by its new version's share of requests, a rolling one by its new
    // version's healthy instances against those wanted, a failed one by its reason alone; one
    // version and no rollout is none.
    let progress = with_module(
        &mut browser,
        "rollout.js",
        "const row = (rollout, versions) => ({version: 3, desired: 3, versions, rollout}); \
         const r = (strategy, phase, extra) => Object.assign({version: 3, previous: 2, strategy, \
             phase, step: 0, steps: 1, started_at: 0, updated_at: 0}, extra); \
         return [ \
           m.progressOf(row(r('canary', 'progressing', {step: 1, steps: 4, \
               weights: [{version: 3, weight: 25}, {version: 2, weight: 75}]}), [])), \
           m.progressOf(row(r('rolling', 'progressing'), \
               [{version: 2, placed: 2, healthy: 2}, {version: 3, placed: 2, healthy: 1}])), \
           m.progressOf(row(r('blue_green', 'rolled_back', {failure: {gate: 'crash_loop', \
               observed: 1, limit: 0, reason: 'web-3 crashed'}}), [])), \
           m.progressOf(row(r('rolling', 'succeeded'), [])), \
           m.progressOf(row(undefined, [{version: 3, placed: 3, healthy: 3}])), \
         ];",
    )
    .await;
    assert_eq!(
        progress,
        serde_json::json!([
            {"phase": "progressing", "fraction": 0.25,
             "detail": "canary v2 → v3 · step 2/4 · v3 25%, v2 75%"},
            {"phase": "progressing", "fraction": 1.0 / 3.0,
             "detail": "rolling v2 → v3 · v3 1/3 healthy"},
            {"phase": "rolled back", "fraction": null,
             "detail": "blue green v2 → v3 · web-3 crashed"},
            {"phase": "succeeded", "fraction": 1, "detail": "rolling v2 → v3"},
            null
        ])
    );

    // Charts: a missing figure lifts the pen, a lone figure is a dot, the scale ends on a
    // round number, and the text alternative says each line's last and highest value.
    let chart = with_module(
        &mut browser,
        "chart.js",
        "const f = m.lineChart({id: 'c', title: 'T', format: String, start: 0, end: 40, \
           series: [{name: 'fra', points: [{t: 0, v: 1}, {t: 10, v: null}, {t: 20, v: 2}, \
             {t: 30, v: 3}]}, {name: 'sin', points: [{t: 0, v: null}]}]}); \
         return [f.querySelector('.series-0 path').getAttribute('d').split('M').length - 1, \
           f.querySelectorAll('.series-0 circle').length, \
           [...f.querySelectorAll('.tick.y')].map(t => t.textContent), \
           f.querySelector('desc').textContent];",
    )
    .await;
    assert_eq!(
        chart,
        serde_json::json!([
            2,
            1,
            ["0", "1.25", "2.5", "3.75", "5"],
            "fra: last 3, highest 3; sin: no figures"
        ])
    );

    // The map fits regions at the world's edges inside its frame, and a lone region too.
    let inside = with_module(
        &mut browser,
        "map.js",
        "const inside = (regions) => [...m.regionMap(regions, 't') \
             .querySelectorAll('[data-region]')].every(g => { \
               const [x, y] = g.getAttribute('transform').match(/-?[0-9.]+/g).map(Number); \
               return x >= 0 && x <= 720 && y >= 0 && y <= 360; }); \
         return [inside([{name: 'a', lat: 89, lon: -179, state: 'x'}, \
             {name: 'b', lat: -89, lon: 179, state: 'x'}]), \
           inside([{name: 'c', lat: 1.35, lon: 103.82, state: 'x'}])];",
    )
    .await;
    assert_eq!(inside, serde_json::json!([true, true]));
    assert!(browser.errors().is_empty(), "{:#?}", browser.errors());
    browser.close().await;
}

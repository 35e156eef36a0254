//! The app's admin client and controller against the real daemon with the real test models:
//! the client parses what the daemon actually answers and streams, and menu clicks change
//! the daemon's state.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use wuwei_api::{Client, Error, EventKind, ModelState};
use wuwei_app::config::AppConfig;
use wuwei_app::controller;

/// The daemon loads its default model (the MLX folder) at start; the GGUF one is loaded only
/// when asked.
const MODEL: &str = "SmolLM2-135M-Instruct";
const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1";

#[test]
fn client_parses_status_models_and_cache() {
    let d = TestDaemon::start(&[]);
    let c = Client::new(&d.url, None);
    let s = c.status().unwrap();
    assert!(s.serving, "{s:?}");
    assert_eq!(s.state, "serving");
    assert_eq!(s.port, d.port);
    assert_eq!(s.host, "127.0.0.1");
    assert!(!s.version.is_empty());
    assert_eq!(s.pid, d.pid(), "status names the daemon's process");
    assert!(!s.models_dirs.is_empty());
    assert!(s.memory.system.total_bytes > 0);
    assert!(s.memory.budget_bytes > 0);
    assert!(s.loaded.iter().all(|l| l.id == MODEL), "{:?}", s.loaded);

    let models = c.models().unwrap();
    let ids: Vec<_> = models.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(&MODEL), "{ids:?}");
    assert!(ids.contains(&"SmolLM2-135M-Instruct.Q4_1"), "{ids:?}");
    let m = models.iter().find(|m| m.id == MODEL).unwrap();
    assert!(
        matches!(m.state, ModelState::Loading | ModelState::Loaded),
        "{m:?}"
    );
    assert_eq!(m.format, "mlx");
    assert!(m.default);
    assert!(m.size_bytes > 0 && m.context_length > 0 && m.estimated_memory_bytes > 0);
    assert_eq!(m.aliases, ["claude-*"]);
    let gguf = models.iter().find(|m| m.id == GGUF).unwrap();
    assert_eq!(gguf.state, ModelState::Available);
    assert_eq!(gguf.format, "gguf");
    assert!(gguf.path.ends_with(".gguf"));

    // The SSD tier (each test daemon has its own folder): on by default, switched at run time.
    let cache = c.cache().unwrap();
    assert!(cache.available && cache.enabled, "{cache:?}");
    assert!(cache.cap_bytes > 0);
    assert_eq!(
        (cache.available, cache.enabled),
        (s.ssd_cache.available, s.ssd_cache.enabled)
    );
    assert!(!c.set_cache(false).unwrap().enabled);
    assert!(!c.status().unwrap().ssd_cache.enabled);
    assert!(c.set_cache(true).unwrap().enabled);
    let settings = c.settings().unwrap();
    assert_eq!(settings.budget_bytes, s.memory.budget_bytes);
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn without_an_ssd_tier_turning_it_on_is_refused() {
    // Prefix caching off: no SSD tier.
    let d = TestDaemon::start_with(&[("WUWEI_KV_CACHE", "false")], &[]);
    let c = Client::new(&d.url, None);
    let cache = c.status().unwrap().ssd_cache;
    assert!(!cache.available && !cache.enabled, "{cache:?}");
    assert!(!c.set_cache(false).unwrap().enabled);
    match c.set_cache(true) {
        Err(Error::Api {
            status: 409, code, ..
        }) => {
            assert_eq!(code.as_deref(), Some("ssd_cache_unavailable"))
        }
        other => panic!("{other:?}"),
    }
    // and the menu shows the item disabled
    let (ui, _handle) = watching(&d);
    let menu = ui.snapshot().menu.unwrap();
    let item = menu.find("ssd-cache").unwrap();
    assert!(!item.enabled());
    assert_eq!(item.label(), Some("SSD &cache (not available)"));
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn actions_change_the_daemon_and_come_back_as_events() {
    let d = TestDaemon::start(&[]);
    let c = Client::new(&d.url, None);
    let (tx, rx) = mpsc::channel();
    let stream = c.events(None).unwrap();
    std::thread::spawn(move || {
        for e in stream {
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    let next = |want: &dyn Fn(&EventKind) -> bool| loop {
        let e = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("event")
            .expect("an event that parses");
        assert!(e.seq > 0 && e.time > 0, "{e:?}");
        if want(&e.kind) {
            return e.kind;
        }
    };

    assert!(!c.set_serving(false).unwrap());
    assert_eq!(
        next(&|k| matches!(k, EventKind::ServingChanged { .. })),
        EventKind::ServingChanged { serving: false }
    );
    assert!(!c.status().unwrap().serving);
    assert!(c.set_serving(true).unwrap());
    next(&|k| *k == EventKind::ServingChanged { serving: true });

    assert!(!c.set_cache(false).unwrap().enabled);
    let EventKind::CacheToggled { enabled, ssd_cache } =
        next(&|k| matches!(k, EventKind::CacheToggled { .. }))
    else {
        unreachable!()
    };
    assert_eq!(enabled, Some(false));
    let tier = ssd_cache.expect("the tier after the switch");
    assert!(tier.available && !tier.enabled);
    c.set_cache(true).unwrap();
    next(&|k| {
        matches!(
            k,
            EventKind::CacheToggled {
                enabled: Some(true),
                ..
            }
        )
    });

    c.set_default(GGUF).unwrap();
    next(&|k| *k == EventKind::DefaultChanged { model: GGUF.into() });
    assert_eq!(c.status().unwrap().default_model.as_deref(), Some(GGUF));

    // Pinning loads the model.
    let pinned = c.pin(GGUF).unwrap().expect("the model");
    assert!(pinned.pinned);
    next(&|k| *k == EventKind::ModelPinned { model: GGUF.into() });
    let EventKind::ModelLoaded {
        memory_bytes,
        weights_mode,
        ..
    } = next(&|k| matches!(k, EventKind::ModelLoaded { .. }))
    else {
        unreachable!()
    };
    assert!(memory_bytes > 0);
    assert!(weights_mode.is_some());
    let s = c.status().unwrap();
    let loaded = s.loaded.iter().find(|l| l.id == GGUF).expect("loaded");
    assert!(loaded.pinned && loaded.memory_bytes > 0 && loaded.weights_bytes > 0);
    assert!(s.memory.counted_bytes >= loaded.weights_bytes);

    // A pinned model cannot be unloaded: the daemon's error comes through as an API error.
    match c.unload(GGUF) {
        Err(Error::Api {
            status: 400,
            message,
            ..
        }) => assert!(!message.is_empty()),
        other => panic!("{other:?}"),
    }
    c.unpin(GGUF).unwrap();
    next(&|k| *k == EventKind::ModelUnpinned { model: GGUF.into() });
    c.unload(GGUF).unwrap();
    next(&|k| matches!(k, EventKind::ModelUnloaded { model, .. } if model == GGUF));
    assert!(!c.status().unwrap().loaded.iter().any(|l| l.id == GGUF));

    // Unknown models are 404 with the documented code.
    match c.pin("no-such-model") {
        Err(Error::Api {
            status: 404, code, ..
        }) => {
            assert_eq!(code.as_deref(), Some("model_not_found"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn the_api_key_is_sent() {
    let d = TestDaemon::start(&["--api-key", "test-key"]);
    match Client::new(&d.url, None).status() {
        Err(Error::Api { status: 401, .. }) => {}
        other => panic!("without the key: {other:?}"),
    }
    assert!(Client::new(&d.url, None).events(None).is_err());
    let c = Client::new(&d.url, Some("test-key".into()));
    assert!(c.status().unwrap().serving);
    c.events(None).unwrap();
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn controller_shows_the_daemon_and_its_menu_clicks_change_it() {
    let d = TestDaemon::start(&[]);
    let ui = RecordingUi::new();
    let config = AppConfig {
        url: d.url.clone(),
        port: d.port,
        api_key: None,
        daemon_bin: None,
        supervise: false,
        models_dir: Some(d.scratch.path().join("models-folder")),
        prefs_path: Some(d.scratch.path().join("config/app.json")),
    };
    let handle = controller::start(config, ui.clone(), Box::new(NoLogin));
    // The default model is loaded at start: wait for the menu to say so.
    let serving_line = format!("Serving on :{} · 1 model loaded", d.port);
    ui.wait(Duration::from_secs(60), "the serving status line", |r| {
        status_of(r) == serving_line && r.daemon_up
    });
    let menu = ui.snapshot().menu.unwrap();
    let radio = menu
        .find(&format!("default/{MODEL}"))
        .expect("model in the menu");
    assert!(radio.enabled());

    let c = Client::new(&d.url, None);
    handle.menu_clicked("serving/stop");
    ui.wait(Duration::from_secs(30), "Stopped", |r| {
        status_of(r) == "Stopped"
    });
    eventually(
        Duration::from_secs(10),
        "the daemon to stop serving",
        || (!c.status().unwrap().serving).then_some(()),
    );
    handle.menu_clicked("serving/start");
    // The menu shows a click at once; the daemon follows when the call is through.
    ui.wait(Duration::from_secs(30), "serving again", |r| {
        status_of(r) == serving_line
    });
    eventually(Duration::from_secs(10), "the daemon to serve again", || {
        c.status().unwrap().serving.then_some(())
    });

    // A change made by someone else (the dashboard, `wuwei stop`) shows through the events.
    c.set_serving(false).unwrap();
    ui.wait(Duration::from_secs(30), "Stopped by another client", |r| {
        status_of(r) == "Stopped"
    });
    c.set_serving(true).unwrap();

    // Pin from the menu: the daemon loads it; the menu comes to say so.
    handle.menu_clicked(&format!("pin/{GGUF}"));
    let two_loaded = format!("Serving on :{} · 2 models loaded", d.port);
    ui.wait(Duration::from_secs(120), "the pinned model loaded", |r| {
        status_of(r) == two_loaded
            && r.menu
                .as_ref()
                .unwrap()
                .find(&format!("pin/{GGUF}"))
                .unwrap()
                .checked()
                == Some(true)
    });
    assert!(c.models().unwrap().iter().any(|m| m.id == GGUF && m.pinned));
    handle.menu_clicked(&format!("default/{GGUF}"));
    eventually(Duration::from_secs(10), "the default model", || {
        (c.status().unwrap().default_model.as_deref() == Some(GGUF)).then_some(())
    });
    ui.wait(Duration::from_secs(10), "the default's radio item", |r| {
        let m = r.menu.as_ref().unwrap();
        m.find(&format!("default/{GGUF}")).unwrap().checked() == Some(true)
            && m.find(&format!("default/{MODEL}")).unwrap().checked() == Some(false)
    });

    // The SSD cache from the menu: the daemon switches, and the choice is kept by the app.
    handle.menu_clicked("ssd-cache");
    eventually(Duration::from_secs(10), "the SSD tier off", || {
        (!c.cache().unwrap().enabled).then_some(())
    });
    ui.wait(Duration::from_secs(10), "the SSD item unchecked", |r| {
        r.menu
            .as_ref()
            .unwrap()
            .find("ssd-cache")
            .unwrap()
            .checked()
            == Some(false)
    });
    let prefs = d.scratch.path().join("config/app.json");
    assert_eq!(wuwei_app::prefs::Prefs::load(&prefs).ssd_cache, Some(false));
    handle.menu_clicked("ssd-cache");
    eventually(Duration::from_secs(10), "the SSD tier on", || {
        c.cache().unwrap().enabled.then_some(())
    });

    handle.menu_clicked("open-dashboard");
    handle.menu_clicked("open-models-folder");
    ui.wait(Duration::from_secs(10), "opened", |r| r.opened.len() == 2);
    let opened = ui.snapshot().opened;
    assert_eq!(opened[0], format!("{}/", d.url));
    assert!(d.scratch.path().join("models-folder").is_dir());

    // Quit leaves a daemon the app did not start alone.
    handle.menu_clicked("quit");
    ui.wait(Duration::from_secs(10), "quit", |r| r.quit);
    assert!(c.status().unwrap().serving);
    assert_eq!(d.stop().code(), Some(0));
}

fn watching(d: &TestDaemon) -> (std::sync::Arc<RecordingUi>, controller::Handle) {
    let ui = RecordingUi::new();
    let config = AppConfig {
        url: d.url.clone(),
        port: d.port,
        api_key: None,
        daemon_bin: None,
        supervise: false,
        models_dir: None,
        prefs_path: None,
    };
    let handle = controller::start(config, ui.clone(), Box::new(NoLogin));
    let prefix = format!("Serving on :{}", d.port);
    ui.wait(Duration::from_secs(60), "the app to connect", |r| {
        status_of(r).starts_with(&prefix)
    });
    (ui, handle)
}

#[test]
fn a_pressure_eviction_is_notified() {
    // A pressure threshold no machine stays above, checked every 100 ms: the daemon unloads
    // idle models for memory pressure as soon as they are loaded.
    let d = TestDaemon::start_with(
        &[
            ("WUWEI_PRESSURE_THRESHOLD", "100%"),
            ("WUWEI_MONITOR_INTERVAL_MS", "100"),
        ],
        &[],
    );
    let (ui, _handle) = watching(&d);
    Client::new(&d.url, None).load(GGUF).unwrap();
    let title = format!("Unloaded {GGUF}");
    ui.wait(Duration::from_secs(60), "the eviction notification", |r| {
        r.notifications.iter().any(|(t, _)| *t == title)
    });
    let (_, body) = ui
        .snapshot()
        .notifications
        .into_iter()
        .find(|(t, _)| *t == title)
        .unwrap();
    assert!(body.starts_with("Memory was running low"), "{body}");
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn a_failed_load_is_notified() {
    // A budget no model fits: loads are refused (507) and reported as `load_failed`.
    let d = TestDaemon::start_with(&[("WUWEI_MEMORY_BUDGET", "1MiB")], &[]);
    let (ui, handle) = watching(&d);
    // Pinning from the menu loads the model: the call fails, and so does the load.
    handle.menu_clicked(&format!("pin/{GGUF}"));
    ui.wait(Duration::from_secs(60), "both notifications", |r| {
        let titles: Vec<_> = r.notifications.iter().map(|(t, _)| t.as_str()).collect();
        titles.contains(&format!("Could not load {GGUF}").as_str())
            && titles.contains(&format!("Could not pin {GGUF}").as_str())
    });
    let notes = ui.snapshot().notifications;
    let (_, body) = notes
        .iter()
        .find(|(t, _)| t.starts_with("Could not pin"))
        .unwrap();
    assert!(body.contains("507"), "{body}");
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn quit_and_stop_ends_a_daemon_the_app_did_not_start() {
    // As the login item's daemon would be: running before the app, not its child.
    let d = TestDaemon::start(&[]);
    let (ui, handle) = watching(&d);
    let item = ui.snapshot().menu.unwrap();
    assert!(item.find("quit-stop-daemon").unwrap().enabled());
    handle.menu_clicked("quit-stop-daemon");
    ui.wait(Duration::from_secs(10), "quit", |r| r.quit);
    // It drains and exits 0 (which launchd's KeepAlive/SuccessfulExit=false leaves stopped).
    let log = d.scratch.path().join("daemon.log");
    let status = d.wait_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("shutdown asked through the admin API"),
        "{log}"
    );
}

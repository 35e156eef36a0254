//! Runs the app: feeds `AppState::update` with what happens (the daemon's event stream,
//! status answers, the daemon child's exit, clicks) on one thread, carries out the effects
//! it answers, and redraws the menu through a `Ui`. Blocking calls to the daemon run on
//! their own threads so that a slow load never holds up the menu.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wuwei_api::{Client, Error as ApiError};

use crate::config::AppConfig;
use crate::login::{self, LoginStatus};
use crate::menu::{self, MenuAction, MenuModel};
use crate::prefs::Prefs;
use crate::state::{ApiCall, AppState, Daemon, Effect, Input};
use crate::supervisor::{describe_exit, Backoff, DaemonProcess};

/// What the controller needs from the native side (tauri in the app; a recorder in tests).
pub trait Ui: Send + Sync + 'static {
    /// Draws the menu; `daemon_up` picks the tray icon.
    fn render(&self, menu: &MenuModel, daemon_up: bool);
    fn notify(&self, title: &str, body: &str);
    fn open_dashboard(&self, url: &str);
    fn open_path(&self, path: &Path);
    fn quit(&self);
}

/// The login item, as the controller uses it (the platform's, or a folder in tests).
pub trait LoginItems: Send + 'static {
    fn status(&self) -> LoginStatus;
    fn set(&self, on: bool) -> Result<LoginStatus, String>;
    fn open_settings(&self);
}

/// The platform's login item (`login.rs`).
pub struct PlatformLogin;

impl LoginItems for PlatformLogin {
    fn status(&self) -> LoginStatus {
        login::status()
    }
    fn set(&self, on: bool) -> Result<LoginStatus, String> {
        login::set(on).map_err(|e| e.to_string())
    }
    fn open_settings(&self) {
        login::open_settings()
    }
}

/// How often the status is fetched while nothing happens (the memory line moves without
/// events). Events fetch it at once.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// How long a stopping daemon gets to drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A handle to the running controller: clicks go in through it.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Input>,
}

impl Handle {
    pub fn menu_clicked(&self, id: &str) {
        match MenuAction::from_id(id) {
            Some(action) => {
                let _ = self.tx.send(Input::Menu(action));
            }
            None => tracing::debug!(id, "menu item without an action"),
        }
    }

    pub fn send(&self, input: Input) {
        let _ = self.tx.send(input);
    }
}

/// Starts the controller's threads and answers the handle that clicks are sent to.
pub fn start(config: AppConfig, ui: Arc<dyn Ui>, login: Box<dyn LoginItems>) -> Handle {
    let (tx, rx) = mpsc::channel();
    let client = Client::new(&config.url, config.api_key.clone());
    let (refresh_tx, refresh_rx) = mpsc::channel();
    spawn_thread("admin-events", {
        let (client, tx) = (client.clone(), tx.clone());
        move || event_loop(client, tx)
    });
    spawn_thread("admin-refresh", {
        let (client, tx) = (client.clone(), tx.clone());
        move || refresh_loop(client, refresh_rx, tx)
    });
    let handle = Handle { tx: tx.clone() };
    spawn_thread("controller", move || {
        let mut state = AppState::new(
            config.port,
            config.supervise && config.daemon_bin.is_some(),
            login.status(),
        );
        state.ssd_wanted = config
            .prefs_path
            .as_deref()
            .and_then(|p| Prefs::load(p).ssd_cache);
        Controller {
            state,
            config,
            client,
            ui,
            login,
            tx,
            refresh_tx,
            daemon: None,
            last_menu: None,
        }
        .run(rx)
    });
    handle
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("cannot start a thread");
}

/// Keeps the event stream open, reconnecting with backoff.
fn event_loop(client: Client, tx: Sender<Input>) {
    // Fast at first (a daemon the app just started is up within a second or two), then
    // every few seconds while it stays away.
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        match client.events(None) {
            Ok(stream) => {
                backoff.reset();
                if tx.send(Input::Connected).is_err() {
                    return;
                }
                let mut why = "the event stream ended".to_string();
                for item in stream {
                    match item {
                        Ok(event) => {
                            if tx.send(Input::Event(event)).is_err() {
                                return;
                            }
                        }
                        Err(e @ ApiError::Decode { .. }) => tracing::warn!("{e}"),
                        Err(e) => {
                            why = e.to_string();
                            break;
                        }
                    }
                }
                if tx.send(Input::Disconnected(why)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if tx.send(Input::Disconnected(e.to_string())).is_err() {
                    return;
                }
            }
        }
        std::thread::sleep(backoff.next_delay());
    }
}

/// Fetches status and models when asked (coalescing a burst of asks into one fetch), and
/// every `REFRESH_EVERY` anyway.
fn refresh_loop(client: Client, asks: Receiver<()>, tx: Sender<Input>) {
    loop {
        match asks.recv_timeout(REFRESH_EVERY) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while asks.try_recv().is_ok() {}
        match client.status().and_then(|s| Ok((s, client.models()?))) {
            Ok((status, models)) => {
                let status = Box::new(status);
                if tx.send(Input::Snapshot { status, models }).is_err() {
                    return;
                }
            }
            // The event stream reports a daemon that went away.
            Err(e) if e.is_unreachable() => {}
            Err(e) => tracing::warn!("refreshing the daemon's state: {e}"),
        }
    }
}

struct Controller {
    state: AppState,
    config: AppConfig,
    client: Client,
    ui: Arc<dyn Ui>,
    login: Box<dyn LoginItems>,
    tx: Sender<Input>,
    refresh_tx: Sender<()>,
    daemon: Option<DaemonProcess>,
    last_menu: Option<MenuModel>,
}

impl Controller {
    fn run(mut self, rx: Receiver<Input>) {
        self.render(true);
        let mut queue = VecDeque::new();
        while let Ok(input) = rx.recv() {
            queue.push_back(input);
            // Take what else is waiting, so that a burst of events draws the menu once.
            while let Ok(more) = rx.try_recv() {
                queue.push_back(more);
            }
            let mut force = false;
            let mut quit = false;
            while let Some(input) = queue.pop_front() {
                tracing::debug!(?input, "input");
                // A click on a check item flips its mark natively: draw the truth again even
                // when the state did not change (a click on a disabled choice, say).
                force |= matches!(input, Input::Menu(_));
                let effects = self.state.update(input, Instant::now());
                for effect in effects {
                    tracing::debug!(?effect, "effect");
                    quit |= effect == Effect::Quit;
                    if let Some(next) = self.carry_out(effect) {
                        queue.push_back(next);
                    }
                }
            }
            self.render(force);
            if quit {
                self.ui.quit();
                return;
            }
        }
    }

    fn render(&mut self, force: bool) {
        let menu = menu::build(&self.state);
        if force || self.last_menu.as_ref() != Some(&menu) {
            self.ui.render(&menu, self.state.daemon == Daemon::Running);
            self.last_menu = Some(menu);
        }
    }

    /// Carries out one effect; answers an input that follows from it at once, if any.
    fn carry_out(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Refresh => {
                let _ = self.refresh_tx.send(());
            }
            Effect::Api(call) => self.api(call),
            Effect::Notify { title, body } => self.ui.notify(&title, &body),
            Effect::SpawnDaemon => return Some(self.spawn_daemon()),
            Effect::ScheduleRestart(delay) => {
                let tx = self.tx.clone();
                spawn_thread("daemon-restart", move || {
                    std::thread::sleep(delay);
                    let _ = tx.send(Input::RestartDue);
                });
            }
            Effect::StopDaemon => {
                if let Some(p) = self.daemon.take() {
                    tracing::info!(pid = p.pid(), "stopping the daemon");
                    p.terminate(STOP_GRACE);
                }
            }
            Effect::ShutdownDaemon => {
                // Synchronous: the app quits right after, which would cut a call in flight.
                match self.client.shutdown() {
                    Ok(()) => tracing::info!("asked the daemon to stop"),
                    Err(e) => tracing::warn!("asking the daemon to stop: {e}"),
                }
            }
            Effect::OpenDashboard => self.ui.open_dashboard(&format!("{}/", self.config.url)),
            Effect::OpenModelsFolder => match &self.config.models_dir {
                Some(dir) => {
                    // The store may not exist before the first model is put there.
                    if let Err(e) = std::fs::create_dir_all(dir) {
                        tracing::warn!("creating {}: {e}", dir.display());
                    }
                    self.ui.open_path(dir);
                }
                None => self.ui.notify("No models folder", "Set WUWEI_MODELS."),
            },
            Effect::SetLoginItem(on) => {
                return Some(match self.login.set(on) {
                    Ok(status) => Input::Login(status),
                    Err(e) => {
                        self.ui.notify("Could not change Launch at login", &e);
                        Input::Login(self.login.status())
                    }
                })
            }
            Effect::OpenLoginItemsSettings => self.login.open_settings(),
            Effect::SaveSsdChoice(on) => {
                if let Some(path) = &self.config.prefs_path {
                    let mut prefs = Prefs::load(path);
                    prefs.ssd_cache = Some(on);
                    if let Err(e) = prefs.save(path) {
                        tracing::warn!("saving {}: {e}", path.display());
                    }
                }
            }
            // Done by `run` once the menu is drawn for the last time.
            Effect::Quit => {}
        }
        None
    }

    fn api(&self, call: ApiCall) {
        let (client, tx, refresh) = (
            self.client.clone(),
            self.tx.clone(),
            self.refresh_tx.clone(),
        );
        spawn_thread("admin-call", move || {
            let result = match &call {
                ApiCall::SetServing(on) => client.set_serving(*on).map(drop),
                ApiCall::SetDefault(m) => client.set_default(m),
                ApiCall::Pin(m) => client.pin(m).map(drop),
                ApiCall::Unpin(m) => client.unpin(m).map(drop),
                ApiCall::SetSsdCache(on) => client.set_cache(*on).map(drop),
            };
            match result {
                Ok(()) => {
                    let _ = refresh.send(());
                }
                Err(e) => {
                    tracing::warn!("{}: {e}", call.describe());
                    let _ = tx.send(Input::ApiFailed {
                        call,
                        error: e.to_string(),
                    });
                }
            }
        });
    }

    fn spawn_daemon(&mut self) -> Input {
        let Some(bin) = self.config.daemon_bin.clone() else {
            return Input::DaemonSpawnFailed("no wuwei binary found".into());
        };
        let tx = self.tx.clone();
        let log: Option<PathBuf> = crate::supervisor::default_log_path();
        let args = self.config.serve_args();
        tracing::info!(bin = %bin.display(), ?args, "starting the daemon");
        match DaemonProcess::spawn(&bin, &args, log.as_deref(), move |status| {
            let _ = tx.send(Input::DaemonExited {
                how: describe_exit(&status),
                success: status.success(),
            });
        }) {
            Ok(p) => {
                tracing::info!(pid = p.pid(), "daemon started");
                self.daemon = Some(p);
                Input::DaemonSpawned
            }
            Err(e) => Input::DaemonSpawnFailed(format!("{}: {e}", bin.display())),
        }
    }
}

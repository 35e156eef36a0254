//! The native layer: turns a `MenuModel` into tauri menu items (updated in place while the
//! menu keeps its shape, rebuilt when it changes), and implements `Ui` for the controller
//! with the tray icon, the dashboard window, notifications and the opener.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use tauri::image::Image;
use tauri::menu::{CheckMenuItem, IsMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Manager, Runtime, WebviewUrl, WebviewWindowBuilder};
use tauri_plugin_notification::NotificationExt;
use tauri_plugin_opener::OpenerExt;

use crate::controller::Ui;
use crate::menu::{Item, MenuModel, Shape};

pub const TRAY_ID: &str = "wuwei";
pub const WINDOW_LABEL: &str = "main";
const ICON_ON: &[u8] = include_bytes!("../icons/tray.png");
const ICON_OFF: &[u8] = include_bytes!("../icons/tray-off.png");

/// A native item, kept by id to update it in place.
pub enum NativeItem<R: Runtime> {
    Text(MenuItem<R>),
    Check(CheckMenuItem<R>),
    Submenu(Submenu<R>),
}

/// The native menu built from a model.
pub struct NativeMenu<R: Runtime> {
    pub menu: Menu<R>,
    shape: Vec<Shape>,
    items: HashMap<String, NativeItem<R>>,
}

impl<R: Runtime> NativeMenu<R> {
    pub fn build<M: Manager<R>>(app: &M, model: &MenuModel) -> tauri::Result<Self> {
        let mut items = HashMap::new();
        let top = build_items(app, &model.items, &mut items)?;
        let refs: Vec<&dyn IsMenuItem<R>> = top.iter().map(|b| b.as_ref()).collect();
        let menu = Menu::with_items(app, &refs)?;
        Ok(NativeMenu {
            menu,
            shape: model.shape(),
            items,
        })
    }

    /// Whether `model` can be drawn by updating this menu's items.
    pub fn fits(&self, model: &MenuModel) -> bool {
        self.shape == model.shape()
    }

    /// Sets every item's text, enabled and checked state from `model` (same shape).
    pub fn update(&self, model: &MenuModel) -> tauri::Result<()> {
        fn walk<R: Runtime>(
            items: &[Item],
            native: &HashMap<String, NativeItem<R>>,
        ) -> tauri::Result<()> {
            for item in items {
                let Some(n) = item.id().and_then(|id| native.get(id)) else {
                    continue;
                };
                let label = item.label().unwrap_or_default();
                match (item, n) {
                    (Item::Text { enabled, .. }, NativeItem::Text(m)) => {
                        m.set_text(label)?;
                        m.set_enabled(*enabled)?;
                    }
                    (
                        Item::Check {
                            checked, enabled, ..
                        }
                        | Item::Radio {
                            checked, enabled, ..
                        },
                        NativeItem::Check(m),
                    ) => {
                        m.set_text(label)?;
                        m.set_enabled(*enabled)?;
                        m.set_checked(*checked)?;
                    }
                    (Item::Submenu { enabled, items, .. }, NativeItem::Submenu(m)) => {
                        m.set_text(label)?;
                        m.set_enabled(*enabled)?;
                        walk(items, native)?;
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        walk(&model.items, &self.items)
    }

    pub fn item(&self, id: &str) -> Option<&NativeItem<R>> {
        self.items.get(id)
    }
}

fn build_items<R: Runtime, M: Manager<R>>(
    app: &M,
    items: &[Item],
    out: &mut HashMap<String, NativeItem<R>>,
) -> tauri::Result<Vec<Box<dyn IsMenuItem<R>>>> {
    let mut built: Vec<Box<dyn IsMenuItem<R>>> = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Item::Text { id, label, enabled } => {
                let m = MenuItem::with_id(app, id, label, *enabled, None::<&str>)?;
                out.insert(id.clone(), NativeItem::Text(m.clone()));
                built.push(Box::new(m));
            }
            Item::Check {
                id,
                label,
                checked,
                enabled,
            }
            | Item::Radio {
                id,
                label,
                checked,
                enabled,
            } => {
                let m = CheckMenuItem::with_id(app, id, label, *enabled, *checked, None::<&str>)?;
                out.insert(id.clone(), NativeItem::Check(m.clone()));
                built.push(Box::new(m));
            }
            Item::Submenu {
                id,
                label,
                enabled,
                items,
            } => {
                let children = build_items(app, items, out)?;
                let refs: Vec<&dyn IsMenuItem<R>> = children.iter().map(|b| b.as_ref()).collect();
                let m = Submenu::with_id_and_items(app, id, label, *enabled, &refs)?;
                out.insert(id.clone(), NativeItem::Submenu(m.clone()));
                built.push(Box::new(m));
            }
            Item::Separator => built.push(Box::new(PredefinedMenuItem::separator(app)?)),
        }
    }
    Ok(built)
}

/// Draws `model` into `current`: in place when the shape is the same, else a new menu.
/// Answers the new menu when one was built (to be set on the tray).
pub fn apply<R: Runtime, M: Manager<R>>(
    app: &M,
    current: &mut Option<NativeMenu<R>>,
    model: &MenuModel,
) -> tauri::Result<Option<Menu<R>>> {
    if let Some(native) = current.as_ref().filter(|n| n.fits(model)) {
        native.update(model)?;
        return Ok(None);
    }
    let native = NativeMenu::build(app, model)?;
    let menu = native.menu.clone();
    *current = Some(native);
    Ok(Some(menu))
}

/// The app's `Ui`: the tray icon and its menu, the dashboard window, notifications.
pub struct TauriUi<R: Runtime> {
    app: AppHandle<R>,
    tray: TrayIcon<R>,
    menu: Mutex<Option<NativeMenu<R>>>,
    daemon_up: Mutex<Option<bool>>,
    status_line: Mutex<String>,
}

impl<R: Runtime> TauriUi<R> {
    /// Creates the tray icon with a first menu.
    pub fn new(app: &AppHandle<R>, first: &MenuModel) -> tauri::Result<Self> {
        let native = NativeMenu::build(app, first)?;
        let tray = TrayIconBuilder::with_id(TRAY_ID)
            .icon(Image::from_bytes(ICON_OFF)?)
            // macOS tints template images for light and dark menu bars.
            .icon_as_template(true)
            .tooltip("Wuwei")
            .menu(&native.menu)
            .show_menu_on_left_click(true)
            .build(app)?;
        Ok(TauriUi {
            app: app.clone(),
            tray,
            menu: Mutex::new(Some(native)),
            daemon_up: Mutex::new(None),
            status_line: Mutex::new(String::new()),
        })
    }
}

impl<R: Runtime> Ui for TauriUi<R> {
    fn render(&self, model: &MenuModel, daemon_up: bool) {
        // The status line in the log when it changes (tests/app reads it from there); the
        // rest of the menu changes often (cache numbers every second) and is not logged.
        let status = model
            .find(crate::menu::STATUS_ID)
            .and_then(Item::label)
            .unwrap_or_default();
        let mut last = self.status_line.lock().unwrap();
        if *last != status {
            tracing::info!(status, "menu");
            *last = status.to_string();
        }
        drop(last);
        let mut current = self.menu.lock().unwrap();
        match apply(&self.app, &mut current, model) {
            Ok(Some(menu)) => {
                if let Err(e) = self.tray.set_menu(Some(menu)) {
                    tracing::warn!("setting the tray menu: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("drawing the menu: {e}"),
        }
        let mut up = self.daemon_up.lock().unwrap();
        if *up != Some(daemon_up) {
            let bytes = if daemon_up { ICON_ON } else { ICON_OFF };
            match Image::from_bytes(bytes).and_then(|i| self.tray.set_icon(Some(i))) {
                Ok(()) => *up = Some(daemon_up),
                Err(e) => tracing::warn!("setting the tray icon: {e}"),
            }
            let _ = self.tray.set_icon_as_template(true);
        }
    }

    fn notify(&self, title: &str, body: &str) {
        tracing::info!(title, body, "notification");
        if let Err(e) = self
            .app
            .notification()
            .builder()
            .title(title)
            .body(body)
            .show()
        {
            tracing::warn!("showing a notification: {e}");
        }
    }

    fn open_dashboard(&self, url: &str) {
        let Ok(parsed) = url.parse::<tauri::Url>() else {
            tracing::warn!(url, "not a URL");
            return;
        };
        let result = match self.app.get_webview_window(WINDOW_LABEL) {
            // Load it again: the daemon may have restarted since the window was opened.
            Some(w) => w
                .navigate(parsed)
                .and_then(|_| w.show())
                .and_then(|_| w.set_focus()),
            None => {
                WebviewWindowBuilder::new(&self.app, WINDOW_LABEL, WebviewUrl::External(parsed))
                    .title("Wuwei")
                    .inner_size(1100.0, 760.0)
                    .build()
                    .and_then(|w| w.set_focus())
            }
        };
        if let Err(e) = result {
            tracing::warn!("opening the dashboard: {e}");
        }
    }

    fn open_path(&self, path: &Path) {
        if let Err(e) = self
            .app
            .opener()
            .open_path(path.to_string_lossy(), None::<&str>)
        {
            tracing::warn!("opening {}: {e}", path.display());
        }
    }

    fn quit(&self) {
        // Not `AppHandle::exit`: once the dashboard's webview has existed, WebKitGTK's
        // teardown at the end of the event loop crashed the app (SIGSEGV under Xvfb, seen in
        // tests/app/test_tray.py). Nor `std::process::exit`: it still runs the C libraries'
        // exit handlers and static destructors while their threads run, which crashed the
        // same way now and then (SIGSEGV after "quit", once in the suite here; three reruns
        // passed). There is nothing left to save (the controller has already stopped the
        // daemon when asked to): flush what was written and end the process at once.
        tracing::info!("quit");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        #[cfg(unix)]
        // SAFETY: `_exit` ends the process without running anything else; no invariant of
        // this program depends on code after it.
        unsafe {
            libc::_exit(0)
        }
        #[cfg(not(unix))]
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    //! The native menu under tauri's mock runtime: no display needed.
    use std::time::Instant;

    use tauri::test::{mock_builder, mock_context, noop_assets, MockRuntime};
    use wuwei_api::{ModelState, ModelStatus, Status};

    use super::*;
    use crate::login::LoginStatus;
    use crate::menu::{self, MenuAction};
    use crate::state::{AppState, Input};

    fn state(serving: bool, models: &[&str]) -> AppState {
        let mut s = AppState::new(8686, true, LoginStatus::Off);
        let t = Instant::now();
        s.update(Input::Connected, t);
        let mut status = Status {
            serving,
            port: 8686,
            default_model: models.first().map(|m| m.to_string()),
            ..Default::default()
        };
        status.memory.budget_bytes = 8_000_000_000;
        let models = models
            .iter()
            .map(|id| ModelStatus {
                id: id.to_string(),
                state: ModelState::Available,
                ..Default::default()
            })
            .collect();
        s.update(
            Input::Snapshot {
                status: Box::new(status),
                models,
            },
            t,
        );
        s
    }

    fn text(n: &NativeMenu<MockRuntime>, id: &str) -> String {
        match n.item(id) {
            Some(NativeItem::Text(m)) => m.text().unwrap(),
            Some(NativeItem::Check(m)) => m.text().unwrap(),
            Some(NativeItem::Submenu(m)) => m.text().unwrap(),
            None => panic!("no native item {id}"),
        }
    }

    fn check(n: &NativeMenu<MockRuntime>, id: &str) -> (bool, bool) {
        match n.item(id) {
            Some(NativeItem::Check(m)) => (m.is_checked().unwrap(), m.is_enabled().unwrap()),
            _ => panic!("{id} is not a check item"),
        }
    }

    #[test]
    fn the_model_becomes_native_items_updated_in_place_or_rebuilt() {
        let app = mock_builder()
            .build(mock_context(noop_assets()))
            .expect("mock app");
        let mut current = None;

        let model = menu::build(&state(true, &["a", "org/b"]));
        let built = apply(&app, &mut current, &model).unwrap();
        let menu_ = built.expect("a first menu is built");
        let native = current.as_ref().unwrap();
        // top level: one native item per model item, separators included
        assert_eq!(menu_.items().unwrap().len(), model.items.len());
        assert_eq!(text(native, "status"), "Serving on :8686 · 0 models loaded");
        assert_eq!(text(native, "serving/stop"), "&Stop serving");
        assert_eq!(check(native, "default/a"), (true, true));
        assert_eq!(check(native, "default/org/b"), (false, true));
        assert_eq!(check(native, "ssd-cache"), (false, false));
        match native.item(menu::DEFAULT_MENU_ID) {
            Some(NativeItem::Submenu(s)) => assert_eq!(s.items().unwrap().len(), 2),
            _ => panic!("no default-model submenu"),
        }

        // Same shape (a new default, other numbers): updated in place, no new menu.
        let mut s = state(true, &["a", "org/b"]);
        s.update(
            Input::Menu(MenuAction::SetDefault("org/b".into())),
            Instant::now(),
        );
        s.status.as_mut().unwrap().memory.counted_bytes = 2_000_000_000;
        assert!(apply(&app, &mut current, &menu::build(&s))
            .unwrap()
            .is_none());
        let native = current.as_ref().unwrap();
        assert_eq!(check(native, "default/a"), (false, true));
        assert_eq!(check(native, "default/org/b"), (true, true));
        assert_eq!(text(native, "memory"), "Memory: 2.0 GB / 8.0 GB budget");

        // A natively flipped check mark is put back by drawing the same model again.
        if let Some(NativeItem::Check(m)) = native.item("pin/a") {
            m.set_checked(true).unwrap();
        }
        assert!(apply(&app, &mut current, &menu::build(&s))
            .unwrap()
            .is_none());
        assert_eq!(check(current.as_ref().unwrap(), "pin/a"), (false, true));

        // A new model (another shape): a new menu.
        let s = state(false, &["a", "org/b", "c"]);
        assert!(apply(&app, &mut current, &menu::build(&s))
            .unwrap()
            .is_some());
        let native = current.as_ref().unwrap();
        assert_eq!(text(native, "status"), "Stopped");
        assert_eq!(text(native, "serving/start"), "&Start serving");
        assert_eq!(check(native, "pin/c"), (false, true));
    }
}

//! The browser side, run from `cargo test`: MQTT.js under Node against the
//! built binary, and the `examples/` page in headless Chromium receiving a
//! message pushed over HTTP, over WebSocket or its fallbacks
//! (`examples/test/*.mjs`). They need Node, the
//! page's npm packages (`npm ci` in `examples/`) and Debian's `chromium`;
//! `.ci/run` installs all three.

use std::path::Path;
use std::process::Command;

fn node(script: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    assert!(
        dir.join("node_modules/mqtt").is_dir(),
        "examples/node_modules is missing: run `npm ci` in examples/ (.ci/run does)"
    );
    let out = Command::new("node")
        .arg(script)
        .current_dir(&dir)
        .env("TETHER_BIN", env!("CARGO_BIN_EXE_tether"))
        .output()
        .expect("node is missing: install Node.js 18+ (.ci/run uses the machine's)");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mqtt_js_over_websocket() {
    node("test/mqttjs.mjs");
}

#[test]
fn examples_page_in_headless_chromium() {
    node("test/browser.mjs");
}

#[test]
fn operator_console_in_headless_chromium() {
    node("test/console.mjs");
}

#[test]
fn fallback_page_in_headless_chromium_behind_a_proxy_that_refuses_upgrades() {
    node("test/fallback.mjs");
}

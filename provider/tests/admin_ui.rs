//! The admin pages in a real browser: `admin-ui/tests/browser.mjs` (playwright-core driving
//! Debian's chromium, both installed by `scripts/test.sh`) against `switchyard demo` run with
//! this binary. Screenshots of each page go to `$CARGO_TARGET_DIR/admin-ui-screenshots`.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn operators_use_the_admin_pages_in_a_browser() {
    // The checkout found at run time: a shared build cache may have built this binary in a
    // checkout at another path.
    let repository =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("..");
    let screenshots = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository.join("target"))
        .join("admin-ui-screenshots");
    let output = Command::new("node")
        .arg(repository.join("admin-ui/tests/browser.mjs"))
        .env("SWITCHYARD_BIN", env!("CARGO_BIN_EXE_switchyard"))
        .env("SCREENSHOT_DIR", &screenshots)
        .output()
        .expect("running node (scripts/test.sh installs it, and admin-ui's packages)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "browser tests failed:\n{printed}");
    assert!(printed.contains("all browser checks passed"), "{printed}");
    for page in [
        "login",
        "dashboard",
        "users",
        "calls-live",
        "calls-history",
        "endpoints",
        "federation",
        "settings",
        "relay",
        "audit",
        "users-viewer",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
}

//! `switchyard demo`: a provider on loopback with SQLite in a temporary directory and two demo
//! users with provisioning codes, ready for `switchyard endpoint ...` in other terminals.

use std::net::SocketAddr;

use anyhow::Context;

use crate::config::Config;
use crate::registry;
use crate::server::Provider;

pub struct DemoUser {
    pub name: &'static str,
    pub uris: [&'static str; 2],
}

pub const DEMO_USERS: [DemoUser; 2] = [
    DemoUser {
        name: "Alice",
        uris: ["tel:+16502530000", "mailto:alice@demo.example"],
    },
    DemoUser {
        name: "Bob",
        uris: ["tel:+442079460958", "mailto:bob@demo.example"],
    },
];

pub async fn run(endpoint_listen: SocketAddr, admin_listen: SocketAddr) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("switchyard-demo-")
        .tempdir()?;
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        provider_id: "demo.switchyard.test".into(),
        ..Config::default()
    };
    config.endpoint_api.listen = endpoint_listen;
    config.admin.listen = admin_listen;
    let provider = Provider::start(config)
        .await
        .context("starting the demo provider")?;
    let app = &provider.app;
    let provider_url = format!("https://{}", provider.endpoint_addr);
    let (ca_path, _) = app.config.endpoint_ca_paths();
    println!(
        "Switchyard demo provider `{}` is running.",
        app.config.provider_id
    );
    println!("  data directory : {}", dir.path().display());
    println!(
        "  endpoint API   : {provider_url}   (mutual TLS; CA certificate {})",
        ca_path.display()
    );
    println!(
        "  admin API      : http://{}   (Authorization: Bearer {})",
        provider.admin_addr, app.admin_token
    );
    println!("  metrics        : http://{}/metrics", provider.admin_addr);
    println!();
    for user in &DEMO_USERS {
        let uris: Vec<String> = user.uris.iter().map(|u| u.to_string()).collect();
        let created = registry::add_user(app, user.name, &uris).await?;
        println!("{} ({}):", user.name, created.uris.join(", "));
        for device in 1..=2 {
            let state = dir
                .path()
                .join(format!("{}-{device}", user.name.to_lowercase()));
            let (code, _) = registry::issue_provisioning_code(app, &created.id, None).await?;
            println!(
                "  switchyard endpoint register --provider {provider_url} --ca {} --uri {} --code {code} --state {}",
                ca_path.display(),
                created.uris[0],
                state.display()
            );
        }
    }
    println!();
    println!("Each code registers one device. Then, in two more terminals:");
    println!(
        "  switchyard endpoint answer --state {} --auto-accept",
        dir.path().join("bob-1").display()
    );
    println!(
        "  switchyard endpoint call {} --state {}",
        DEMO_USERS[1].uris[1],
        dir.path().join("alice-1").display()
    );
    println!();
    println!("Press Ctrl-C to stop (the temporary directory is removed).");
    shutdown_signal().await;
    println!("stopping…");
    provider.shutdown().await;
    drop(dir);
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

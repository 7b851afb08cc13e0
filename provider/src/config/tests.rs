use super::*;

fn check(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(text, Vec::<(String, String)>::new())
}

#[test]
fn empty_file_gives_documented_defaults() {
    let config = check("").unwrap();
    assert_eq!(config.invitation.ring_timeout_seconds, 60);
    assert_eq!(config.push.ttl_seconds, 60);
    assert_eq!(config.endpoint_api.listen.port(), 7443);
    assert!(config
        .database_url()
        .starts_with("sqlite:/var/lib/switchyard/"));
}

#[test]
fn every_error_is_reported_with_its_key_path() {
    let err = check(
        r#"
        provider_id = "bad id!"
        colour = "blue"
        [database]
        url = "mysql://x"
        max_connections = "many"
        [invitation]
        ring_timeout_seconds = -5
        [endpoint_api]
        listen = "not an address"
        "#,
    )
    .unwrap_err();
    let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"colour"), "{keys:?}");
    assert!(keys.contains(&"database.max_connections"), "{keys:?}");
    assert!(
        keys.contains(&"invitation.ring_timeout_seconds"),
        "{keys:?}"
    );
    assert!(keys.contains(&"endpoint_api.listen"), "{keys:?}");
    assert_eq!(
        keys.len(),
        4,
        "semantic checks wait for type errors: {keys:?}"
    );

    let err = check("provider_id = \"bad id!\"\n[database]\nurl = \"mysql://x\"\n").unwrap_err();
    let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["provider_id", "database.url"]);
}

#[test]
fn syntax_error_is_reported() {
    let err = check("[database\nurl = 1").unwrap_err();
    assert!(err.to_string().contains("not valid TOML"), "{err}");
}

#[test]
fn environment_overrides_file_values() {
    let config = Config::from_toml_with_env(
        "[invitation]\nring_timeout_seconds = 30\n",
        vec![
            (
                "SWITCHYARD_INVITATION__RING_TIMEOUT_SECONDS".into(),
                "45".into(),
            ),
            ("SWITCHYARD_DATABASE__URL".into(), "postgres://db/x".into()),
            (
                "SWITCHYARD_REGISTRY__DEFAULT_COUNTRY_CODE".into(),
                "44".into(),
            ),
            ("UNRELATED".into(), "1".into()),
        ],
    )
    .unwrap();
    assert_eq!(config.invitation.ring_timeout_seconds, 45);
    assert_eq!(config.database_url(), "postgres://db/x");
    assert_eq!(config.registry.default_country_code, Some(44));
}

#[test]
fn bad_environment_override_is_reported_by_key_and_variable() {
    let err = Config::from_toml_with_env(
        "",
        vec![("SWITCHYARD_PUSH__TTL_SECONDS".into(), "soon".into())],
    )
    .unwrap_err();
    assert_eq!(err.issues()[0].key, "push.ttl_seconds");
    assert!(
        err.issues()[0]
            .message
            .ends_with("(set by SWITCHYARD_PUSH__TTL_SECONDS)"),
        "{err}"
    );
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[test]
fn overrides_are_keys_with_double_underscores_or_top_level_keys() {
    for name in [
        "SWITCHYARD_DATABASE__URL",
        "SWITCHYARD_ADMIN__TOKEN_FILE",
        "SWITCHYARD_NO_SUCH__KEY",
        "SWITCHYARD_DATA_DIR",
        "SWITCHYARD_PROVIDER_ID",
    ] {
        assert!(is_env_override(name), "{name}");
    }
    for name in [
        "SWITCHYARD_ADMIN_URL",
        "SWITCHYARD_ADMIN_TOKEN",
        "SWITCHYARD_ADMIN_TOKEN_FILE",
        "SWITCHYARD_BIN",
        "SWITCHYARD_ADMIN",
        "DATABASE__URL",
    ] {
        assert!(!is_env_override(name), "{name}");
    }
}

#[test]
fn the_admin_command_lines_variables_are_not_configuration() {
    let config = Config::from_toml_with_env(
        "provider_id = \"a.example\"\n",
        env(&[
            ("SWITCHYARD_ADMIN_URL", "http://127.0.0.1:7080"),
            ("SWITCHYARD_ADMIN_TOKEN", "0123456789abcdef"),
            (
                "SWITCHYARD_ADMIN_TOKEN_FILE",
                "/var/lib/switchyard/admin-token",
            ),
            ("SWITCHYARD_DATA_DIR", "/srv/switchyard"),
        ]),
    )
    .unwrap();
    assert_eq!(config.provider_id, "a.example");
    assert_eq!(config.data_dir, Path::new("/srv/switchyard"));
}

#[test]
fn unknown_environment_keys_are_reported_with_their_variable() {
    let err = Config::from_toml_with_env(
        "",
        env(&[
            ("SWITCHYARD_DATABASE__URLL", "sqlite:x"),
            ("SWITCHYARD_NO_SUCH__KEY", "1"),
        ]),
    )
    .unwrap_err();
    let issues: Vec<String> = err.issues().iter().map(ToString::to_string).collect();
    assert_eq!(
        issues,
        [
            "database.urll: unknown key (set by SWITCHYARD_DATABASE__URLL)",
            "no_such: unknown key (set by SWITCHYARD_NO_SUCH__KEY)",
        ]
    );

    let err =
        Config::from_toml_with_env("", env(&[("SWITCHYARD_PROVIDER_ID", "bad id!")])).unwrap_err();
    assert_eq!(err.issues()[0].key, "provider_id");
    assert!(
        err.issues()[0]
            .message
            .ends_with("(set by SWITCHYARD_PROVIDER_ID)"),
        "{err}"
    );
}

#[test]
fn the_deployment_example_is_valid() {
    let text = include_str!("../../../deploy/switchyard.toml");
    let config = check(text).unwrap();
    assert!(config.federation.enabled);
    assert_eq!(config.federation.directory_refresh_seconds, 300);
}

#[test]
fn federation_needs_its_files_and_bootstrap_uri() {
    let err = check("[federation]\nenabled = true\nbootstrap_uri = \"ftp://x\"\nbloom_false_positive_rate = 0.9\n")
        .unwrap_err();
    let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "federation.ca_cert",
            "federation.cert",
            "federation.key",
            "federation.bootstrap_uri",
            "federation.bloom_false_positive_rate"
        ]
    );
}

#[test]
fn relay_defaults_and_checks() {
    let config = check("").unwrap();
    assert!(!config.relay.enabled);
    assert_eq!(config.relay.listen.port(), 3478);
    assert_eq!(config.relay_public_ip().to_string(), "127.0.0.1");
    assert_eq!(config.relay_realm(), config.provider_id);
    assert!(config.relay_secret_path().ends_with("relay-secret"));
    let config = check("[relay]\nlisten = \"192.0.2.7:3478\"\n").unwrap();
    assert_eq!(config.relay_public_ip().to_string(), "192.0.2.7");
    let err = check(
        "[relay]\ncredential_ttl_seconds = 0\nmax_allocations = 2\nrelay_address = \"0.0.0.0\"\n",
    )
    .unwrap_err();
    let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "relay.credential_ttl_seconds",
            "relay.max_allocations_per_endpoint",
            "relay.relay_address"
        ]
    );
}

#[test]
fn defaults_round_trip_through_toml() {
    let text = Config::default().to_toml();
    let again = check(&text).unwrap();
    assert_eq!(again.to_toml(), text);
}

//! The configuration loader: any text, with any `REGISTRY_*` override,
//! gives a configuration or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_proxy::config::Config;

fuzz_target!(|input: (&str, Option<(&str, &str)>)| {
    let (text, var) = input;
    let env = var.map(|(k, v)| (format!("REGISTRY_{k}"), v.to_owned()));
    if let Ok(config) = Config::parse("fuzz", text, env) {
        // A configuration that loads answers every derived setting.
        config.backend().expect("validated");
        config.listen().expect("validated");
        let namespaces = config.namespaces().expect("validated");
        assert!(!namespaces.is_empty(), "a configuration without a namespace");
    }
});

//! Test-only: one known mistake planted in a valid config file ([`with_fault`]), and the key path
//! whose diagnostic it must cause.

use proptest::prelude::*;
use toml::{Table, Value};

use super::strategies::{table, text};

/// One mistake and the key path of the diagnostic it must cause.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    BadSize,
    ZeroRate,
    ListenerAddress,
    BareDuration,
    LogFormat,
    UnknownRootKey,
    UnknownProxyKey,
    WrongType,
    NegativeUid,
    PerIpAboveTotal,
    BadHostname,
    BadUpstream,
    TooManyRetries,
    UnknownSiteKey,
    BadPrefix,
    DuplicateHostname,
}

/// Any of the faults.
pub fn fault() -> impl Strategy<Value = Fault> {
    use Fault::*;
    prop::sample::select(vec![
        BadSize,
        ZeroRate,
        ListenerAddress,
        BareDuration,
        LogFormat,
        UnknownRootKey,
        UnknownProxyKey,
        WrongType,
        NegativeUid,
        PerIpAboveTotal,
        BadHostname,
        BadUpstream,
        TooManyRetries,
        UnknownSiteKey,
        BadPrefix,
        DuplicateHostname,
    ])
}

fn at<'t>(t: &'t mut Table, key: &str) -> &'t mut Table {
    if !matches!(t.get(key), Some(Value::Table(_))) {
        t.insert(key.to_owned(), Value::Table(Table::new()));
    }
    match t.get_mut(key) {
        Some(Value::Table(inner)) => inner,
        _ => unreachable!("inserted above"),
    }
}

fn item<'t>(t: &'t mut Table, key: &str, index: usize) -> Option<&'t mut Table> {
    t.get_mut(key)?
        .as_array_mut()?
        .get_mut(index)?
        .as_table_mut()
}

/// Plants `fault` in a valid `config` and returns the key path its diagnostic names. A fault
/// about sites, in a file without enough sites, becomes an unknown key at the top instead.
pub fn with_fault(config: &mut Table, fault: Fault) -> String {
    use Fault::*;
    let sites = config
        .get("sites")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let fault = match fault {
        BadHostname | BadUpstream | TooManyRetries | UnknownSiteKey | BadPrefix if sites == 0 => {
            UnknownRootKey
        }
        DuplicateHostname if sites < 2 => UnknownRootKey,
        other => other,
    };
    match fault {
        BadSize => {
            config.insert("body_limit_bytes".into(), text("10x"));
            "body_limit_bytes".into()
        }
        ZeroRate => {
            config.insert(
                "rate_limit".into(),
                table([
                    ("requests_per_second", Value::Integer(0)),
                    ("burst", Value::Integer(1)),
                ]),
            );
            "rate_limit.requests_per_second".into()
        }
        ListenerAddress => {
            if let Some(l) = item(at(config, "proxy"), "listeners", 0) {
                l.insert("address".into(), text("localhost:80"));
            }
            "proxy.listeners[0].address".into()
        }
        BareDuration => {
            at(config, "proxy").insert("shutdown_timeout".into(), text("30"));
            "proxy.shutdown_timeout".into()
        }
        LogFormat => {
            at(config, "logging").insert("format".into(), text("xml"));
            "logging.format".into()
        }
        UnknownRootKey => {
            config.insert("rate_limt".into(), Value::Integer(1));
            "rate_limt".into()
        }
        UnknownProxyKey => {
            at(config, "proxy").insert("shutdown_timout".into(), text("1s"));
            "proxy.shutdown_timout".into()
        }
        WrongType => {
            if let Some(l) = item(at(config, "proxy"), "listeners", 0) {
                l.insert("tls".into(), text("yes"));
            }
            "proxy.listeners[0].tls".into()
        }
        NegativeUid => {
            at(config, "control").insert(
                "allowed_gids".into(),
                Value::Array(vec![Value::Integer(-1)]),
            );
            "control.allowed_gids[0]".into()
        }
        PerIpAboveTotal => {
            let p = at(config, "proxy");
            p.insert("max_connections".into(), Value::Integer(10));
            p.insert("max_connections_per_ip".into(), Value::Integer(11));
            "proxy.max_connections_per_ip".into()
        }
        BadHostname => {
            if let Some(s) = item(config, "sites", 0) {
                s.insert(
                    "hostnames".into(),
                    Value::Array(vec![text("Example.com:80")]),
                );
            }
            "sites[0].hostnames[0]".into()
        }
        BadUpstream => {
            if let Some(s) = item(config, "sites", 0) {
                s.insert(
                    "upstreams".into(),
                    Value::Array(vec![text("ftp://x.example")]),
                );
            }
            "sites[0].upstreams[0]".into()
        }
        TooManyRetries => {
            if let Some(s) = item(config, "sites", 0) {
                s.insert("retries".into(), Value::Integer(9));
            }
            "sites[0].retries".into()
        }
        UnknownSiteKey => {
            if let Some(s) = item(config, "sites", 0) {
                s.insert("hostname".into(), text("a.example"));
            }
            "sites[0].hostname".into()
        }
        BadPrefix => {
            let route = table([("path_prefix", text("no-slash")), ("respond", table([]))]);
            if let Some(s) = item(config, "sites", 0) {
                s.insert("routes".into(), Value::Array(vec![route]));
            }
            "sites[0].routes[0].path_prefix".into()
        }
        DuplicateHostname => {
            let first = item(config, "sites", 0)
                .and_then(|s| s.get("hostnames")?.as_array()?.first().cloned());
            if let (Some(name), Some(s)) = (first, item(config, "sites", 1)) {
                s.insert("hostnames".into(), Value::Array(vec![name]));
            }
            "sites[1].hostnames[0]".into()
        }
    }
}

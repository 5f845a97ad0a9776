//! The Docker-link-style variables the kubelet gives every container for the Services it may use
//! (`WEB_SERVICE_HOST`, `WEB_PORT_80_TCP_ADDR`, …): the `kubernetes` Service of the `default`
//! namespace always (in-cluster clients find the API through it), the other Services of the pod's
//! namespace unless the pod sets `enableServiceLinks: false`.

use std::collections::BTreeMap;

use serde_json::Value;

/// The namespace and name of the Service that leads to the API server.
const API_SERVICE: (&str, &str) = ("default", "kubernetes");

/// `my-svc` → `MY_SVC`.
fn var_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// The variables for `pod` from `services` (every Service the node knows), sorted by service.
pub fn service_env<'a>(pod: &Value, services: impl IntoIterator<Item = &'a Value>) -> Vec<(String, String)> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let links = pod["spec"]["enableServiceLinks"].as_bool() != Some(false);
    let mut chosen: BTreeMap<&str, &Value> = BTreeMap::new();
    for svc in services {
        let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let (svc_ns, name) = (
            svc["metadata"]["namespace"].as_str().unwrap_or_default(),
            svc["metadata"]["name"].as_str().unwrap_or_default(),
        );
        if (svc_ns, name) == API_SERVICE {
            chosen.entry(name).or_insert(svc);
        } else if svc_ns == ns && links {
            chosen.insert(name, svc);
        }
    }
    let mut env = Vec::new();
    for (name, svc) in chosen {
        let ports: Vec<&Value> = svc["spec"]["ports"].as_array().into_iter().flatten().collect();
        let Some(first) = ports.first() else {
            continue;
        };
        let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
        let prefix = var_name(name);
        let number = |p: &Value| p["port"].as_u64().unwrap_or_default().to_string();
        env.push((format!("{prefix}_SERVICE_HOST"), ip.to_owned()));
        env.push((format!("{prefix}_SERVICE_PORT"), number(first)));
        for p in &ports {
            if let Some(port_name) = p["name"].as_str().filter(|n| !n.is_empty()) {
                env.push((
                    format!("{prefix}_SERVICE_PORT_{}", var_name(port_name)),
                    number(p),
                ));
            }
        }
        for (i, p) in ports.iter().enumerate() {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            let (lower, upper) = (protocol.to_lowercase(), protocol.to_uppercase());
            let url = format!("{lower}://{ip}:{}", number(p));
            if i == 0 {
                env.push((format!("{prefix}_PORT"), url.clone()));
            }
            let port_prefix = format!("{prefix}_PORT_{}_{upper}", number(p));
            env.push((format!("{port_prefix}_PROTO"), lower));
            env.push((format!("{port_prefix}_PORT"), number(p)));
            env.push((format!("{port_prefix}_ADDR"), ip.to_owned()));
            env.push((port_prefix, url));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name},
               "spec": {"clusterIP": ip, "ports": ports}})
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_service_gives_the_kubelets_variables() {
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {}});
        let web = svc(
            "shop",
            "web-front",
            "10.96.0.20",
            json!([{"name": "http", "port": 80}, {"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
        );
        let env = service_env(&pod, [&web]);
        let expect = [
            ("WEB_FRONT_SERVICE_HOST", "10.96.0.20"),
            ("WEB_FRONT_SERVICE_PORT", "80"),
            ("WEB_FRONT_SERVICE_PORT_HTTP", "80"),
            ("WEB_FRONT_SERVICE_PORT_DNS_UDP", "53"),
            ("WEB_FRONT_PORT", "tcp://10.96.0.20:80"),
            ("WEB_FRONT_PORT_80_TCP", "tcp://10.96.0.20:80"),
            ("WEB_FRONT_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_FRONT_PORT_80_TCP_PORT", "80"),
            ("WEB_FRONT_PORT_80_TCP_ADDR", "10.96.0.20"),
            ("WEB_FRONT_PORT_53_UDP", "udp://10.96.0.20:53"),
            ("WEB_FRONT_PORT_53_UDP_PROTO", "udp"),
        ];
        for (k, v) in expect {
            assert_eq!(get(&env, k), Some(v), "{k} in {env:?}");
        }
    }

    #[test]
    fn the_api_service_always_and_others_of_the_namespace_unless_links_are_off() {
        let api = svc(
            "default",
            "kubernetes",
            "10.96.0.1",
            json!([{"name": "https", "port": 443}]),
        );
        let mine = svc("shop", "db", "10.96.0.5", json!([{"port": 5432}]));
        let theirs = svc("other", "cache", "10.96.0.6", json!([{"port": 6379}]));
        let headless = svc("shop", "peers", "None", json!([{"port": 7000}]));
        let external = json!({"metadata": {"namespace": "shop", "name": "ext"},
                              "spec": {"type": "ExternalName", "externalName": "example.com"}});
        let all = [&api, &mine, &theirs, &headless, &external];
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {}});
        let env = service_env(&pod, all);
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get(&env, "DB_SERVICE_HOST"), Some("10.96.0.5"));
        assert_eq!(get(&env, "CACHE_SERVICE_HOST"), None);
        assert_eq!(get(&env, "PEERS_SERVICE_HOST"), None);
        assert_eq!(get(&env, "EXT_SERVICE_HOST"), None);

        let unlinked = json!({"metadata": {"namespace": "shop"}, "spec": {"enableServiceLinks": false}});
        let env = service_env(&unlinked, all);
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get(&env, "DB_SERVICE_HOST"), None);

        // A `kubernetes` Service of the pod's own namespace wins over the API's (as the kubelet's
        // map of services by name), whatever the order.
        let own = svc("shop", "kubernetes", "10.96.0.9", json!([{"port": 1}]));
        for order in [[&api, &own], [&own, &api]] {
            let env = service_env(&pod, order);
            assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.9"));
        }
    }
}

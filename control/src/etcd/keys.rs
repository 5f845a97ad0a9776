//! Upstream's key layout over Skiff's: `etcdctl` users name keys as a Kubernetes tutorial does
//! (`/registry/pods/default/nginx`, `/registry/services/specs/...`, `/registry/minions/...`), and
//! the store keeps `/registry/<group>/<resource>/...`. Built-in resources drop their group, with
//! upstream's exceptions; custom resources and the two groups upstream keeps
//! (`apiextensions.k8s.io`, `apiregistration.k8s.io`) are the same in both; keys outside
//! `/registry/` too.

use crate::objects::registry::Registry;

/// Pairs of (Skiff's prefix, upstream's prefix), longest first for each side's matching.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pairs: Vec<(String, String)>,
}

/// Upstream's segment for a built-in resource, where it is not its plural.
fn upstream_segment(group: &str, plural: &str) -> String {
    match (group, plural) {
        ("", "services") => "services/specs".to_owned(),
        ("", "endpoints") => "services/endpoints".to_owned(),
        ("", "nodes") => "minions".to_owned(),
        ("", "replicationcontrollers") => "controllers".to_owned(),
        ("networking.k8s.io", "ingresses") => "ingress".to_owned(),
        ("apiextensions.k8s.io" | "apiregistration.k8s.io", _) => format!("{group}/{plural}"),
        _ => plural.to_owned(),
    }
}

impl Layout {
    /// The layout of the built-in resources `registry` serves.
    pub fn new(registry: &Registry) -> Self {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for info in registry.all() {
            if info.crd.is_some() {
                continue;
            }
            let ours = info.prefix();
            if pairs.iter().any(|(o, _)| *o == ours) {
                continue;
            }
            let theirs = format!("/registry/{}/", upstream_segment(&info.group, &info.plural));
            if pairs.iter().any(|(_, t)| *t == theirs) {
                continue;
            }
            pairs.push((ours, theirs));
        }
        Self { pairs }
    }

    fn map<'a>(&'a self, key: &str, from: impl Fn(&'a (String, String)) -> (&'a str, &'a str)) -> String {
        self.pairs
            .iter()
            .map(&from)
            .filter(|(f, _)| key.starts_with(f))
            .max_by_key(|(f, _)| f.len())
            .map_or_else(|| key.to_owned(), |(f, t)| format!("{t}{}", &key[f.len()..]))
    }

    /// Upstream's name for a stored key.
    pub fn upstream(&self, ours: &str) -> String {
        self.map(ours, |(o, t)| (o.as_str(), t.as_str()))
    }

    /// The stored key upstream's `theirs` names.
    pub fn ours(&self, theirs: &str) -> String {
        self.map(theirs, |(o, t)| (t.as_str(), o.as_str()))
    }

    /// The stored prefix holding every key under upstream's `prefix`, when one prefix does
    /// (`/registry/pods/` and below); `None` when keys of several resources can match.
    pub fn ours_prefix(&self, prefix: &str) -> Option<String> {
        if !prefix.starts_with("/registry/") {
            // Outside the registry both layouts are the same, but the registry sorts inside
            // most ranges that start before it.
            return (!"/registry/".starts_with(prefix) && !prefix.is_empty()).then(|| prefix.to_owned());
        }
        let covered = self.pairs.iter().any(|(_, t)| prefix.starts_with(t.as_str()));
        let custom = {
            // `/registry/<group with a dot>/<resource>/`: the same in both layouts.
            let rest = &prefix["/registry/".len()..];
            let mut parts = rest.splitn(3, '/');
            let group = parts.next().unwrap_or_default();
            group.contains('.') && parts.next().is_some_and(|r| !r.is_empty()) && parts.next().is_some()
        };
        (covered || custom).then(|| self.ours(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_upstream_writes_them_and_back() {
        let layout = Layout::new(&Registry::new());
        for (ours, theirs) in [
            (
                "/registry/core/pods/default/nginx",
                "/registry/pods/default/nginx",
            ),
            (
                "/registry/core/services/default/web",
                "/registry/services/specs/default/web",
            ),
            (
                "/registry/core/endpoints/default/web",
                "/registry/services/endpoints/default/web",
            ),
            ("/registry/core/nodes/n1", "/registry/minions/n1"),
            (
                "/registry/apps/deployments/default/d",
                "/registry/deployments/default/d",
            ),
            (
                "/registry/core/replicationcontrollers/default/rc",
                "/registry/controllers/default/rc",
            ),
            (
                "/registry/apiextensions.k8s.io/customresourcedefinitions/a.example.com",
                "/registry/apiextensions.k8s.io/customresourcedefinitions/a.example.com",
            ),
            (
                "/registry/example.com/widgets/default/w",
                "/registry/example.com/widgets/default/w",
            ),
            (
                "/skiff/members/0000000000000001",
                "/skiff/members/0000000000000001",
            ),
        ] {
            assert_eq!(layout.upstream(ours), theirs);
            assert_eq!(layout.ours(theirs), ours);
        }
        assert_eq!(
            layout.ours_prefix("/registry/pods/"),
            Some("/registry/core/pods/".to_owned())
        );
        assert_eq!(
            layout.ours_prefix("/registry/services/specs/default/"),
            Some("/registry/core/services/default/".to_owned())
        );
        assert_eq!(layout.ours_prefix("/registry/"), None);
        assert_eq!(layout.ours_prefix("/registry/po"), None);
        assert_eq!(layout.ours_prefix("/skiff/"), Some("/skiff/".to_owned()));
    }
}

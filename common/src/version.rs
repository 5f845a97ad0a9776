//! Skiff's own version and the skew it allows between the control plane and its agents, as
//! Kubernetes allows between the API server and kubelets: an agent may be one minor version older
//! than the control plane (so the control plane is upgraded first, then the agents in place), never
//! newer. Until 1.0 the minor version is what breaks compatibility, as SemVer has it for `0.x`.

/// This build's version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How an agent names itself in `User-Agent`: `skiff-agent/VERSION`.
pub const AGENT_PRODUCT: &str = "skiff-agent";

/// The `User-Agent` of this build's agent (a constant: it goes on every request the agent sends).
pub const AGENT_USER_AGENT: &str = concat!("skiff-agent/", env!("CARGO_PKG_VERSION"));

/// The agent version a `User-Agent` names, when it is an agent's.
pub fn agent_version(user_agent: &str) -> Option<&str> {
    let rest = user_agent.strip_prefix(AGENT_PRODUCT)?.strip_prefix('/')?;
    Some(rest.split_whitespace().next().unwrap_or(rest))
}

/// `major.minor` of a version such as `0.1.0`, `v1.2.3` or `1.2.0-rc.1`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim().trim_start_matches('v').split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether an agent at `agent` may work with a control plane at `control`: the same major version,
/// and a minor version equal to the control plane's or one below it. The error says which side to
/// upgrade, in one line.
pub fn check_skew(control: &str, agent: &str) -> Result<(), String> {
    let (Some((cmaj, cmin)), Some((amaj, amin))) = (major_minor(control), major_minor(agent)) else {
        return Err(format!(
            "cannot compare skiff-agent {agent:?} with the control plane's {control:?}: not versions"
        ));
    };
    if (amaj, amin) > (cmaj, cmin) {
        return Err(format!(
            "skiff-agent {agent} is newer than the control plane ({control}): upgrade the control plane first"
        ));
    }
    if amaj != cmaj || amin + 1 < cmin {
        return Err(format!(
            "skiff-agent {agent} is more than one minor version older than the control plane ({control}): \
             upgrade the agent (agents may be at most one minor version behind)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_may_be_one_minor_behind_never_ahead() {
        assert_eq!(check_skew("0.1.0", "0.1.0"), Ok(()));
        assert_eq!(check_skew("0.1.3", "0.1.0"), Ok(()));
        assert_eq!(
            check_skew("0.1.0", "0.1.7"),
            Ok(()),
            "patch releases of one minor mix freely"
        );
        assert_eq!(check_skew("0.2.0", "0.1.5"), Ok(()));
        assert_eq!(check_skew("v1.4.0", "1.3.2-rc.1"), Ok(()));
        let newer = check_skew("0.1.0", "0.2.0").unwrap_err();
        assert!(
            newer.contains("newer") && newer.contains("upgrade the control plane first"),
            "{newer}"
        );
        let older = check_skew("0.3.0", "0.1.9").unwrap_err();
        assert!(older.contains("more than one minor version older"), "{older}");
        assert!(check_skew("1.0.0", "0.9.0").is_err(), "a major version apart");
        assert!(check_skew("2.0.0", "1.9.0").is_err());
        assert!(
            check_skew("0.1.0", "latest")
                .unwrap_err()
                .contains("not versions")
        );
    }

    #[test]
    fn agents_name_their_version_in_the_user_agent() {
        assert_eq!(agent_version(AGENT_USER_AGENT), Some(VERSION));
        assert_eq!(agent_version("skiff-agent/0.2.1 (linux)"), Some("0.2.1"));
        assert_eq!(agent_version("kubectl/v1.20.0"), None);
        assert_eq!(agent_version("skiff-agentish/1.0"), None);
    }
}

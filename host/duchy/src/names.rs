//! Resource names used by the system API.

/// Resource ids are base64url API ids (or test-friendly short ids): 1..=64 of `[A-Za-z0-9_-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn split<'a>(name: &'a str, pattern: &[&str]) -> Option<Vec<&'a str>> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() != pattern.len() {
        return None;
    }
    let mut ids = Vec::new();
    for (p, want) in parts.iter().zip(pattern) {
        if *want == "*" {
            if !valid_id(p) {
                return None;
            }
            ids.push(*p);
        } else if p != want {
            return None;
        }
    }
    Some(ids)
}

/// `computations/{c}` → c
pub fn parse_computation(name: &str) -> Option<&str> {
    split(name, &["computations", "*"]).map(|v| v[0])
}

/// `computations/{c}/participants/{d}` → (c, d)
pub fn parse_participant(name: &str) -> Option<(&str, &str)> {
    split(name, &["computations", "*", "participants", "*"]).map(|v| (v[0], v[1]))
}

/// `computations/{c}/participants/{d}/computationStage` → (c, d)
pub fn parse_computation_stage(name: &str) -> Option<(&str, &str)> {
    split(
        name,
        &["computations", "*", "participants", "*", "computationStage"],
    )
    .map(|v| (v[0], v[1]))
}

/// `computations/{c}/requisitions/{r}` → (c, r)
pub fn parse_system_requisition(name: &str) -> Option<(&str, &str)> {
    split(name, &["computations", "*", "requisitions", "*"]).map(|v| (v[0], v[1]))
}

/// `dataProviders/{dp}/requisitions/{r}` → (dp, r)
pub fn parse_public_requisition(name: &str) -> Option<(&str, &str)> {
    split(name, &["dataProviders", "*", "requisitions", "*"]).map(|v| (v[0], v[1]))
}

pub fn computation_name(id: &str) -> String {
    format!("computations/{id}")
}

pub fn participant_name(id: &str, duchy: &str) -> String {
    format!("computations/{id}/participants/{duchy}")
}

pub fn computation_stage_name(id: &str, duchy: &str) -> String {
    format!("computations/{id}/participants/{duchy}/computationStage")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(
            parse_computation("computations/AAAAAAAAAAE"),
            Some("AAAAAAAAAAE")
        );
        assert_eq!(parse_computation("computations/"), None);
        assert_eq!(parse_computation("computations/a/b"), None);
        assert_eq!(parse_computation("computations/a b"), None);
        assert_eq!(
            parse_participant("computations/x/participants/worker1"),
            Some(("x", "worker1"))
        );
        assert_eq!(
            parse_computation_stage("computations/x/participants/w/computationStage"),
            Some(("x", "w"))
        );
        assert_eq!(
            parse_public_requisition("dataProviders/e/requisitions/r"),
            Some(("e", "r"))
        );
        assert_eq!(
            parse_public_requisition("dataProviders/e/requisition/r"),
            None
        );
    }
}

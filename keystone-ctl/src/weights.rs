//! `weights`: backend weights by hand.

use std::collections::{BTreeMap, BTreeSet};

use keystone_api::WeightsRequest;

use crate::{
    client::{Failure, fail},
    exit,
};

/// `name=weight` with a whole weight; the error names the pair.
pub fn parse_weight_pair(s: &str) -> Result<(String, u32), String> {
    let Some((name, weight)) = s.split_once('=') else {
        return Err(format!("'{s}' is not NAME=WEIGHT (e.g. api-v2=10)"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("'{s}' has no backend name before '='"));
    }
    let weight = weight.trim().parse::<u32>().map_err(|_| {
        format!("'{s}': weight '{weight}' is not a whole number ≥ 0 (e.g. {name}=10)")
    })?;
    Ok((name.to_owned(), weight))
}

pub fn weights_request(pairs: &[(String, u32)]) -> Result<WeightsRequest, Failure> {
    let mut seen = BTreeSet::new();
    let mut weights = BTreeMap::new();
    for (name, weight) in pairs {
        if !seen.insert(name) {
            return Err(fail(
                exit::USAGE,
                format!("backend '{name}' is given twice"),
            ));
        }
        weights.insert(name.clone(), *weight);
    }
    Ok(WeightsRequest { weights })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Command, client::body_of, parse};

    #[test]
    fn weights_pairs_parse_and_errors_name_the_pair() {
        let cli = parse(&["weights", "api", "api-v1=90", "api-v2=10"]).unwrap();
        let Command::Weights { tenant, weights } = cli.command else {
            panic!()
        };
        assert_eq!(tenant, "api");
        assert_eq!(
            weights,
            [("api-v1".to_owned(), 90), ("api-v2".to_owned(), 10)]
        );
        assert_eq!(
            body_of(&weights_request(&weights).unwrap()),
            json!({"weights": {"api-v1": 90, "api-v2": 10}})
        );

        for (bad, says) in [
            ("api-v2", "'api-v2' is not NAME=WEIGHT"),
            (
                "api-v2=ten",
                "'api-v2=ten': weight 'ten' is not a whole number",
            ),
            ("api-v2=-1", "'api-v2=-1': weight '-1'"),
            ("=5", "'=5' has no backend name"),
        ] {
            let e = parse(&["weights", "api", "api-v1=90", bad])
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        assert!(parse(&["weights", "api"]).is_err(), "at least one pair");
        let e = weights_request(&[("a".into(), 1), ("a".into(), 2)]).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert_eq!(e.message, "backend 'a' is given twice");
    }
}

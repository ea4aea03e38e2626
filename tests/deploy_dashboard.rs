//! The Grafana dashboard (`dashboards/bindwatch.json`): its variables and datasources,
//! and the panels the end-to-end test expects.

mod common;

use std::collections::BTreeSet;

use common::deploy::*;

#[test]
fn dashboard_variables_and_datasources() {
    let dash = dashboard();
    let version = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&version), "schemaVersion {version}");
    let vars = arr(&dash["templating"]["list"], "templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let inst = var("instance");
    assert_eq!(inst["type"], "query");
    assert_eq!(inst["datasource"]["uid"], "${datasource}");
    let q = inst["query"]["query"].as_str().or(inst["query"].as_str());
    assert_eq!(q, Some("label_values(bindwatch_build_info, instance)"));

    let panels = panels(&dash);
    assert!(panels.len() >= 8, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = s(&p["title"], "panel title");
        assert!(
            ids.insert(p["id"].to_string()),
            "duplicate panel id in {title}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = arr(&p["targets"], title);
        assert!(!targets.is_empty(), "panel {title} has no targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "target of {title}");
            let expr = s(&t["expr"], title);
            assert!(
                expr.contains("instance=~\"$instance\""),
                "panel {title}: query not filtered by instance=~\"$instance\": {expr}"
            );
        }
    }
}

/// `bindwatch_e2e_expect_data` marks, on each panel and each target, whether it must show data
/// in the end-to-end test (a live bindwatch scraped by Prometheus). Grafana ignores the field.
#[test]
fn dashboard_marks_what_the_e2e_test_expects() {
    let dash = dashboard();
    let panels = panels(&dash);
    for p in &panels {
        let title = s(&p["title"], "panel title");
        let want = p["bindwatch_e2e_expect_data"]
            .as_bool()
            .unwrap_or_else(|| panic!("panel {title}: bindwatch_e2e_expect_data must be a bool"));
        let mut any_target = false;
        for t in arr(&p["targets"], title) {
            any_target |= t["bindwatch_e2e_expect_data"].as_bool().unwrap_or_else(|| {
                panic!("target of {title}: bindwatch_e2e_expect_data must be a bool")
            });
        }
        assert_eq!(
            want, any_target,
            "panel {title}: expects data iff one of its targets does"
        );
        if E2E_PANELS.contains(&title) {
            assert!(
                want,
                "panel {title} must be marked bindwatch_e2e_expect_data: true"
            );
        }
    }
    for title in E2E_PANELS {
        assert!(
            panels.iter().any(|p| p["title"] == *title),
            "no panel {title}"
        );
    }
}

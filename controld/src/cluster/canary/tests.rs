use super::*;

fn state(node: &str) -> NodeState {
    NodeState {
        node: node.to_owned(),
        build: String::new(),
        applied_version: 1,
        applied_hash: String::new(),
        tried_version: 1,
        error: String::new(),
        at_unix_ms: 0,
        instance: String::new(),
        traffic: None,
    }
}

fn plan(nodes: &[&str], count: u32) -> CanaryPlan {
    CanaryPlan {
        nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
        count,
        wait: Duration::from_secs(1),
        max_5xx_rise: 1.0,
    }
}

#[test]
fn canaries_are_live_nodes_by_name_or_the_first_by_count() {
    let live = [state("web-3"), state("web-1"), state("web-2")];
    assert_eq!(choose(&plan(&[], 2), &live).unwrap(), ["web-1", "web-2"]);
    assert_eq!(
        choose(&plan(&["web-3", "web-3"], 0), &live).unwrap(),
        ["web-3"]
    );
    let e = choose(&plan(&["web-9"], 0), &live).unwrap_err();
    assert!(e.contains("\"web-9\" is not a live node"), "{e}");
    assert!(choose(&plan(&[], 0), &live).is_err());
    assert!(choose(&plan(&[], 4), &live).is_err());
    assert_eq!(choose(&plan(&[], 3), &live).unwrap().len(), 3);
}

#[test]
fn a_canary_degrades_when_its_5xx_ratio_rises_past_the_bound() {
    let f = |before: (u64, u64), during: (u64, u64)| CanaryFigures {
        node: "web-1".into(),
        before,
        during,
        no_figures: false,
    };
    // 0.5% before, 1.4% in the window: within one point.
    assert!(degraded(&f((1000, 5), (1000, 14)), 1.0).is_none());
    // 0.5% before, 1.6% in the window: past it.
    let why = degraded(&f((1000, 5), (1000, 16)), 1.0).unwrap();
    assert!(why.contains("canary web-1: 5xx ratio 1.6%"), "{why}");
    // No traffic in the window, or no figures at all: nothing to judge.
    assert!(degraded(&f((1000, 5), (0, 0)), 1.0).is_none());
    let none = CanaryFigures {
        no_figures: true,
        ..f((0, 0), (10, 10))
    };
    assert!(degraded(&none, 1.0).is_none());
    // A proxyd that restarted in the window is judged on what it counted since.
    let restarted = figures(
        "web-1",
        Some(Traffic {
            responses: 500,
            responses_5xx: 0,
        }),
        Some(Traffic {
            responses: 20,
            responses_5xx: 10,
        }),
    );
    assert_eq!(restarted.during, (20, 10));
    assert!(degraded(&restarted, 1.0).is_some());
}

#[test]
fn only_a_clearly_degraded_canary_is_stopped_before_its_window_ends() {
    let f = |during: (u64, u64)| CanaryFigures {
        node: "web-1".into(),
        before: (200_000, 1_000),
        during,
        no_figures: false,
    };
    // A healthy canary (0.5 %) with one 5xx among its first 20 responses: judged at the end
    // only, where it passes.
    assert!(early_verdict(&f((20, 1)), 1.0).is_none());
    assert!(degraded(&f((600, 3)), 1.0).is_none());
    // A broken one: stopped at once.
    assert!(early_verdict(&f((20, 20)), 1.0).is_some());
    assert!(early_verdict(&f((25, 10)), 1.0).is_some());
}

#[test]
fn a_count_of_canaries_skips_nodes_that_serve_nothing() {
    let mut down = state("web-1");
    down.error = "no data plane is connected to this host's controld".into();
    let live = [down, state("web-2"), state("web-3")];
    assert_eq!(choose(&plan(&[], 1), &live).unwrap(), ["web-2"]);
    let e = choose(&plan(&[], 3), &live).unwrap_err();
    assert!(e.contains("2 live node(s) that serve"), "{e}");
    // Named, it is the operator's choice.
    assert_eq!(choose(&plan(&["web-1"], 0), &live).unwrap(), ["web-1"]);
}

use super::*;

const T0: u64 = 1_700_000_000_000;

fn register(state: &mut ControlState, name: &str) {
    let response = state.apply(Command::RegisterRegion {
        name: name.into(),
        bridges: vec![format!("{name}.example:7000")],
        now_ms: T0,
    });
    assert_eq!(response.outcome, Ok(Outcome::Done));
}

/// A state with live regions `eu`, `us` and `ap`.
fn three_regions() -> ControlState {
    let mut state = ControlState::default();
    for name in ["eu", "us", "ap"] {
        register(&mut state, name);
    }
    state
}

fn assign(state: &mut ControlState, channel: &str, preferred: &str, now_ms: u64) -> Response {
    state.apply(Command::GetOrAssignHome {
        channel: channel.into(),
        preferred_region: preferred.into(),
        now_ms,
    })
}

fn assign_batch(
    state: &mut ControlState,
    channels: &[&str],
    preferred: &str,
    now_ms: u64,
) -> Vec<HomeAnswer> {
    let response = state.apply(Command::GetOrAssignHomes {
        channels: channels.iter().map(|c| c.to_string()).collect(),
        preferred_region: preferred.into(),
        now_ms,
    });
    answers_of(response)
}

fn touch_batch(state: &mut ControlState, channels: &[&str], now_ms: u64) -> Vec<HomeAnswer> {
    let response = state.apply(Command::TouchHomes {
        channels: channels.iter().map(|c| c.to_string()).collect(),
        now_ms,
    });
    answers_of(response)
}

/// The per-channel answers of a batch that was accepted as a whole.
fn answers_of(response: Response) -> Vec<HomeAnswer> {
    match response.outcome {
        Ok(Outcome::Homes { answers }) => answers,
        other => panic!("expected a batch of homes, got {other:?}"),
    }
}

/// What a single home command answered, as a batch would list it.
fn as_answer(channel: &str, response: Response) -> HomeAnswer {
    let (home, assigned) = match response.outcome {
        Ok(Outcome::Home { home, assigned }) => (Ok(home), assigned),
        Err(error) => (Err(error), false),
        other => panic!("expected a home, got {other:?}"),
    };
    HomeAnswer {
        channel: channel.into(),
        home,
        assigned,
    }
}

/// The home a successful command answered with.
fn home_of(response: &Response) -> Home {
    match &response.outcome {
        Ok(Outcome::Home { home, .. }) => home.clone(),
        other => panic!("expected a home, got {other:?}"),
    }
}

fn rule(app_id: &str, prefix: &str, region: &str) -> PlacementRule {
    PlacementRule {
        app_id: app_id.into(),
        prefix: prefix.into(),
        region: region.into(),
    }
}

fn app(id: &str, key_ids: &[&str]) -> App {
    App {
        id: id.into(),
        keys: (key_ids.iter())
            .map(|k| AppKey {
                name: format!("{id}.{k}"),
                secret: format!("secret-{k}"),
                capability: r#"{"*":["*"]}"#.into(),
            })
            .collect(),
        namespaces: vec![Namespace {
            id: "persisted".into(),
            persisted: true,
        }],
    }
}

// ----- assignment

#[test]
fn first_use_assigns_the_preferred_region_with_an_epoch_at_least_now() {
    let mut state = three_regions();

    let response = assign(&mut state, "app/chat", "us", T0 + 5);

    let Ok(Outcome::Home { home, assigned }) = response.outcome else {
        panic!("unexpected {response:?}");
    };
    assert!(assigned);
    assert_eq!(home.region, "us");
    assert_eq!(home.epoch, T0 + 5);
    assert_eq!(home.last_used_ms, T0 + 5);
    assert_eq!(state.catalog().home("app/chat"), Some(&home));
}

#[test]
fn an_existing_home_is_returned_unchanged_and_touched() {
    let mut state = three_regions();
    let first = home_of(&assign(&mut state, "app/chat", "eu", T0));

    let again = assign(&mut state, "app/chat", "us", T0 + 100);

    assert_eq!(
        again.outcome,
        Ok(Outcome::Home {
            home: Home {
                last_used_ms: T0 + 100,
                ..first.clone()
            },
            assigned: false,
        })
    );
    assert_eq!(state.catalog().home("app/chat").unwrap().region, "eu");
}

#[test]
fn an_unknown_or_lost_preferred_region_falls_back_to_a_live_region() {
    let mut state = three_regions();
    state.apply(Command::DeclareRegionLost {
        region: "ap".into(),
        now_ms: T0,
    });

    let from_lost = home_of(&assign(&mut state, "app/a", "ap", T0));
    let from_unknown = home_of(&assign(&mut state, "app/b", "mars", T0));

    assert!(["eu", "us"].contains(&from_lost.region.as_str()));
    assert!(["eu", "us"].contains(&from_unknown.region.as_str()));
}

#[test]
fn assignment_without_any_live_region_is_refused_and_changes_nothing() {
    let mut state = ControlState::default();

    let response = assign(&mut state, "app/chat", "eu", T0);

    assert_eq!(response.outcome, Err(CommandError::NoRegionAvailable));
    assert_eq!(response.version, 0);
    assert_eq!(state.catalog().home("app/chat"), None);
}

#[test]
fn channel_keys_without_an_app_are_refused() {
    let mut state = three_regions();
    let version = state.version();

    for bad in ["chat", "/chat", "app/", ""] {
        let response = assign(&mut state, bad, "eu", T0);
        assert_eq!(
            response.outcome,
            Err(CommandError::InvalidChannel(bad.into())),
            "{bad:?}"
        );
    }
    assert_eq!(state.version(), version);
}

// ----- placement rules

#[test]
fn a_placement_rule_pins_a_namespace_whatever_region_asks() {
    let mut state = three_regions();
    state.apply(Command::SetPlacementRules {
        rules: vec![rule(ANY_APP, "eu-only:", "eu"), rule("vip", "", "ap")],
    });

    let pinned = home_of(&assign(&mut state, "app/eu-only:orders", "us", T0));
    let free = home_of(&assign(&mut state, "app/orders", "us", T0));
    let vip = home_of(&assign(&mut state, "vip/anything", "us", T0));

    assert_eq!(pinned.region, "eu");
    assert_eq!(free.region, "us");
    assert_eq!(vip.region, "ap");
}

#[test]
fn a_rule_naming_a_lost_region_gives_way_to_the_next_matching_rule() {
    let mut state = three_regions();
    state.apply(Command::SetPlacementRules {
        rules: vec![
            rule(ANY_APP, "eu-only:", "eu"),
            rule(ANY_APP, "eu-only:", "ap"),
        ],
    });
    state.apply(Command::DeclareRegionLost {
        region: "eu".into(),
        now_ms: T0,
    });

    let home = home_of(&assign(&mut state, "app/eu-only:orders", "us", T0));

    assert_eq!(home.region, "ap");
}

#[test]
fn rules_with_empty_fields_are_refused_and_identical_rules_change_nothing() {
    let mut state = three_regions();
    let bad = state.apply(Command::SetPlacementRules {
        rules: vec![rule("", "x:", "eu")],
    });
    assert!(matches!(bad.outcome, Err(CommandError::Invalid { .. })));

    let rules = vec![rule(ANY_APP, "x:", "eu")];
    let set = state.apply(Command::SetPlacementRules {
        rules: rules.clone(),
    });
    let again = state.apply(Command::SetPlacementRules {
        rules: rules.clone(),
    });

    assert_eq!(set.version, again.version);
    assert_eq!(state.catalog().rules(), &rules[..]);
}

// ----- epochs, expiry and touches

#[test]
fn epochs_never_decrease_for_a_channel_across_expiry_and_reassignment() {
    let mut state = three_regions();
    let first = home_of(&assign(&mut state, "app/chat", "eu", T0));

    // Expire it, then assign it again from a proposer whose clock is an hour behind.
    let expired = state.apply(Command::ExpireIdleHomes {
        now_ms: T0 + 10,
        idle_ms: 10,
    });
    assert_eq!(expired.outcome, Ok(Outcome::Removed { count: 1 }));
    let second = home_of(&assign(&mut state, "app/chat", "us", T0 - 3_600_000));

    assert!(second.epoch > first.epoch, "{second:?} after {first:?}");

    // And once more, with a clock that went back yet further.
    state.apply(Command::ExpireIdleHomes {
        now_ms: T0 + 10,
        idle_ms: 0,
    });
    let third = home_of(&assign(&mut state, "app/chat", "ap", 1));
    assert!(third.epoch > second.epoch);
}

#[test]
fn expiry_removes_only_homes_idle_for_long_enough() {
    let mut state = three_regions();
    assign(&mut state, "app/old", "eu", T0);
    assign(&mut state, "app/touched", "eu", T0);
    assign(&mut state, "app/new", "eu", T0 + 50);
    let touch = state.apply(Command::TouchHome {
        channel: "app/touched".into(),
        now_ms: T0 + 60,
    });
    assert_eq!(home_of(&touch).last_used_ms, T0 + 60);

    let response = state.apply(Command::ExpireIdleHomes {
        now_ms: T0 + 100,
        idle_ms: 50,
    });

    assert_eq!(response.outcome, Ok(Outcome::Removed { count: 2 }));
    let left: Vec<&String> = state.catalog().homes().map(|(c, _)| c).collect();
    assert_eq!(left, ["app/touched"]);
}

#[test]
fn touches_never_move_last_use_back_and_need_a_home() {
    let mut state = three_regions();
    assign(&mut state, "app/chat", "eu", T0 + 100);
    let version = state.version();

    let late = state.apply(Command::TouchHome {
        channel: "app/chat".into(),
        now_ms: T0,
    });
    let missing = state.apply(Command::TouchHome {
        channel: "app/none".into(),
        now_ms: T0,
    });

    assert_eq!(home_of(&late).last_used_ms, T0 + 100);
    assert_eq!(late.version, version, "a stale touch is not a change");
    assert_eq!(
        missing.outcome,
        Err(CommandError::NoSuchHome("app/none".into()))
    );
}

// ----- batches

#[test]
fn a_batch_assigns_exactly_what_single_commands_would() {
    let setup = |state: &mut ControlState| {
        state.apply(Command::SetPlacementRules {
            rules: vec![rule(ANY_APP, "eu-only:", "eu")],
        });
        assign(state, "app/known", "ap", T0);
    };
    let mut singly = three_regions();
    let mut batched = three_regions();
    setup(&mut singly);
    setup(&mut batched);
    // New, pinned, already homed, named twice, and a bad name among them.
    let channels = [
        "app/a",
        "app/eu-only:b",
        "app/known",
        "app/a",
        "bad",
        "other/c",
    ];

    let expected: Vec<HomeAnswer> = (channels.iter())
        .map(|c| as_answer(c, assign(&mut singly, c, "us", T0 + 10)))
        .collect();
    let answers = assign_batch(&mut batched, &channels, "us", T0 + 10);

    assert_eq!(answers, expected);
    // The same records under the same versions, change log included.
    assert_eq!(batched, singly);
}

#[test]
fn a_batch_follows_placement_rules_and_mixes_known_and_new_channels() {
    let mut state = three_regions();
    state.apply(Command::SetPlacementRules {
        rules: vec![rule(ANY_APP, "eu-only:", "eu"), rule("vip", "", "ap")],
    });
    let known = home_of(&assign(&mut state, "app/known", "ap", T0));

    let answers = assign_batch(
        &mut state,
        &["app/known", "app/eu-only:x", "vip/y", "app/z"],
        "us",
        T0 + 100,
    );

    let regions: Vec<&str> = (answers.iter())
        .map(|a| a.home.as_ref().unwrap().region.as_str())
        .collect();
    assert_eq!(regions, ["ap", "eu", "ap", "us"]);
    let assigned: Vec<bool> = answers.iter().map(|a| a.assigned).collect();
    assert_eq!(assigned, [false, true, true, true]);
    // The known home is unchanged but for its last use.
    assert_eq!(
        answers[0].home,
        Ok(Home {
            last_used_ms: T0 + 100,
            ..known
        })
    );
    assert_eq!(state.catalog().homes().count(), 4);
}

#[test]
fn a_refused_channel_fails_alone_and_a_batch_with_no_region_assigns_nothing() {
    let mut state = three_regions();

    let answers = assign_batch(&mut state, &["app/ok", "no-app", "app/also"], "eu", T0);

    assert_eq!(
        answers[1].home,
        Err(CommandError::InvalidChannel("no-app".into()))
    );
    assert!(answers[0].home.is_ok() && answers[2].home.is_ok());

    let mut empty = ControlState::default();
    let answers = assign_batch(&mut empty, &["app/a", "app/b"], "eu", T0);
    assert!(answers
        .iter()
        .all(|a| a.home == Err(CommandError::NoRegionAvailable)));
    assert_eq!(empty.version(), 0);
}

#[test]
fn a_touch_batch_keeps_homes_from_expiring_and_reports_unknown_channels() {
    let mut state = three_regions();
    assign_batch(
        &mut state,
        &["app/kept", "app/idle", "app/also-kept"],
        "eu",
        T0,
    );

    let answers = touch_batch(
        &mut state,
        &["app/kept", "app/none", "app/also-kept"],
        T0 + 60,
    );
    let expired = state.apply(Command::ExpireIdleHomes {
        now_ms: T0 + 100,
        idle_ms: 50,
    });

    assert_eq!(answers[0].home.as_ref().unwrap().last_used_ms, T0 + 60);
    assert_eq!(
        answers[1].home,
        Err(CommandError::NoSuchHome("app/none".into()))
    );
    assert_eq!(expired.outcome, Ok(Outcome::Removed { count: 1 }));
    let left: Vec<&String> = state.catalog().homes().map(|(c, _)| c).collect();
    assert_eq!(left, ["app/also-kept", "app/kept"]);
}

#[test]
fn a_batch_over_the_limit_is_refused_whole_and_changes_nothing() {
    let mut state = three_regions();
    let version = state.version();
    let names: Vec<String> = (0..=MAX_HOMES_PER_COMMAND)
        .map(|i| format!("app/c{i}"))
        .collect();

    let response = state.apply(Command::GetOrAssignHomes {
        channels: names.clone(),
        preferred_region: "eu".into(),
        now_ms: T0,
    });

    assert!(matches!(
        response.outcome,
        Err(CommandError::Invalid { .. })
    ));
    assert_eq!(state.version(), version);
    let at_limit = state.apply(Command::GetOrAssignHomes {
        channels: names[1..].to_vec(),
        preferred_region: "eu".into(),
        now_ms: T0,
    });
    assert_eq!(at_limit.version, version + MAX_HOMES_PER_COMMAND as u64);
}

// ----- moves

#[test]
fn an_operator_move_sets_the_new_region_under_a_higher_epoch() {
    let mut state = three_regions();
    let before = home_of(&assign(&mut state, "app/chat", "eu", T0));

    // Even when the operator's clock is behind the home's epoch.
    let moved = state.apply(Command::MoveHome {
        channel: "app/chat".into(),
        to_region: "us".into(),
        now_ms: T0 - 1_000,
    });

    let Ok(Outcome::Home { home, assigned }) = moved.outcome else {
        panic!("unexpected {moved:?}");
    };
    assert!(assigned);
    assert_eq!(home.region, "us");
    assert_eq!(home.epoch, before.epoch + 1);
    assert_eq!(
        before.previous_region, None,
        "a first assignment has no predecessor"
    );
    assert_eq!(
        home.previous_region.as_deref(),
        Some("eu"),
        "the new home knows whom to ask"
    );
    assert_eq!(state.catalog().home("app/chat"), Some(&home));
}

#[test]
fn moving_to_the_current_region_changes_nothing() {
    let mut state = three_regions();
    let before = home_of(&assign(&mut state, "app/chat", "eu", T0));
    let version = state.version();

    let response = state.apply(Command::MoveHome {
        channel: "app/chat".into(),
        to_region: "eu".into(),
        now_ms: T0 + 5,
    });

    assert_eq!(
        response.outcome,
        Ok(Outcome::Home {
            home: before,
            assigned: false
        })
    );
    assert_eq!(state.version(), version);
}

#[test]
fn moves_to_unknown_or_lost_regions_are_refused() {
    let mut state = three_regions();
    assign(&mut state, "app/chat", "eu", T0);
    state.apply(Command::DeclareRegionLost {
        region: "ap".into(),
        now_ms: T0,
    });
    let move_to = |state: &mut ControlState, region: &str| {
        state
            .apply(Command::MoveHome {
                channel: "app/chat".into(),
                to_region: region.into(),
                now_ms: T0,
            })
            .outcome
    };

    assert_eq!(
        move_to(&mut state, "mars"),
        Err(CommandError::UnknownRegion("mars".into()))
    );
    assert_eq!(
        move_to(&mut state, "ap"),
        Err(CommandError::RegionLost("ap".into()))
    );
    assert_eq!(state.catalog().home("app/chat").unwrap().region, "eu");
}

#[test]
fn moving_a_channel_without_a_home_assigns_it_there() {
    let mut state = three_regions();

    let response = state.apply(Command::MoveHome {
        channel: "app/new".into(),
        to_region: "ap".into(),
        now_ms: T0,
    });

    assert_eq!(home_of(&response).region, "ap");
    assert_eq!(home_of(&response).epoch, T0);
}

// ----- regions

#[test]
fn a_region_loss_rehomes_each_of_its_channels_to_survivors_under_new_epochs() {
    let mut state = three_regions();
    let channels: Vec<String> = (0..40).map(|i| format!("app/ch{i}")).collect();
    for channel in &channels {
        assign(&mut state, channel, "eu", T0);
    }
    assign(&mut state, "app/elsewhere", "us", T0);
    let before = state.catalog().clone();

    let response = state.apply(Command::DeclareRegionLost {
        region: "eu".into(),
        now_ms: T0 + 1,
    });

    assert_eq!(response.outcome, Ok(Outcome::Rehomed { channels: 40 }));
    assert!(state.catalog().region("eu").unwrap().lost);
    let mut used = BTreeMap::<&str, usize>::new();
    for channel in &channels {
        let old = before.home(channel).unwrap();
        let new = state.catalog().home(channel).unwrap();
        assert_ne!(new.region, "eu");
        assert!(new.epoch > old.epoch);
        *used.entry(new.region.as_str()).or_default() += 1;
    }
    assert_eq!(used.len(), 2, "spread over both survivors: {used:?}");
    assert_eq!(
        state.catalog().home("app/elsewhere"),
        before.home("app/elsewhere")
    );
}

#[test]
fn a_region_loss_follows_placement_rules() {
    let mut state = three_regions();
    state.apply(Command::SetPlacementRules {
        rules: vec![rule(ANY_APP, "gdpr:", "eu"), rule(ANY_APP, "gdpr:", "ap")],
    });
    for i in 0..10 {
        assign(&mut state, &format!("app/gdpr:{i}"), "us", T0);
    }

    state.apply(Command::DeclareRegionLost {
        region: "eu".into(),
        now_ms: T0,
    });

    assert!(state.catalog().homes().all(|(_, h)| h.region == "ap"));
}

#[test]
fn the_last_live_region_cannot_be_declared_lost() {
    let mut state = ControlState::default();
    register(&mut state, "eu");
    assign(&mut state, "app/chat", "eu", T0);
    let version = state.version();

    let response = state.apply(Command::DeclareRegionLost {
        region: "eu".into(),
        now_ms: T0,
    });

    assert_eq!(response.outcome, Err(CommandError::NoRegionAvailable));
    assert_eq!(state.version(), version);
    assert!(!state.catalog().region("eu").unwrap().lost);
}

#[test]
fn declaring_a_region_lost_twice_or_an_unknown_one() {
    let mut state = three_regions();
    let lose = |state: &mut ControlState, region: &str| {
        state.apply(Command::DeclareRegionLost {
            region: region.into(),
            now_ms: T0,
        })
    };
    lose(&mut state, "ap");
    let version = state.version();

    assert_eq!(
        lose(&mut state, "ap").outcome,
        Ok(Outcome::Rehomed { channels: 0 })
    );
    assert_eq!(state.version(), version);
    assert_eq!(
        lose(&mut state, "mars").outcome,
        Err(CommandError::UnknownRegion("mars".into()))
    );
}

#[test]
fn registering_again_brings_a_lost_region_back_but_a_heartbeat_does_not() {
    let mut state = three_regions();
    state.apply(Command::DeclareRegionLost {
        region: "ap".into(),
        now_ms: T0,
    });

    state.apply(Command::RegionHeartbeat {
        name: "ap".into(),
        now_ms: T0 + 1,
    });
    assert!(state.catalog().region("ap").unwrap().lost);

    state.apply(Command::RegisterRegion {
        name: "ap".into(),
        bridges: vec!["ap2.example:7000".into()],
        now_ms: T0 + 2,
    });
    let region = state.catalog().region("ap").unwrap();
    assert!(!region.lost);
    assert_eq!(region.bridges, ["ap2.example:7000"]);
    assert_eq!(region.last_heartbeat_ms, T0 + 2);
}

#[test]
fn heartbeats_move_forward_only_and_need_a_registered_region() {
    let mut state = three_regions();
    let beat = |state: &mut ControlState, name: &str, now_ms: u64| {
        state.apply(Command::RegionHeartbeat {
            name: name.into(),
            now_ms,
        })
    };

    beat(&mut state, "eu", T0 + 10);
    let stale = beat(&mut state, "eu", T0 + 5);
    let unknown = beat(&mut state, "mars", T0);

    assert_eq!(
        state.catalog().region("eu").unwrap().last_heartbeat_ms,
        T0 + 10
    );
    assert_eq!(stale.version, state.version());
    assert_eq!(
        unknown.outcome,
        Err(CommandError::UnknownRegion("mars".into()))
    );
}

// ----- apps and revocations

#[test]
fn apps_are_created_once_and_their_keys_found_by_name() {
    let mut state = ControlState::default();

    let created = state.apply(Command::CreateApp {
        app: app("a1", &["k1", "k2"]),
    });
    let duplicate = state.apply(Command::CreateApp {
        app: app("a1", &["k3"]),
    });

    assert_eq!(created.outcome, Ok(Outcome::Done));
    assert_eq!(duplicate.outcome, Err(CommandError::AppExists("a1".into())));
    let (found, key) = state.catalog().key("a1.k2").unwrap();
    assert_eq!(found.id, "a1");
    assert_eq!(key.secret, "secret-k2");
    assert!(state.catalog().key("a1.k3").is_none());
}

#[test]
fn apps_with_bad_ids_or_key_names_are_refused() {
    let mut state = ControlState::default();
    let mut foreign_key = app("a1", &["k1"]);
    foreign_key.keys[0].name = "other.k1".into();
    let duplicate_keys = app("a1", &["k1", "k1"]);

    for bad in [app("a/b", &[]), app("", &[]), foreign_key, duplicate_keys] {
        let response = state.apply(Command::CreateApp { app: bad.clone() });
        assert!(
            matches!(response.outcome, Err(CommandError::Invalid { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(state.version(), 0);
}

#[test]
fn deleting_an_app_removes_its_homes_and_revocations_only() {
    let mut state = three_regions();
    state.apply(Command::CreateApp {
        app: app("a1", &["k1"]),
    });
    state.apply(Command::CreateApp {
        app: app("a10", &["k1"]),
    });
    let old = home_of(&assign(&mut state, "a1/chat", "eu", T0));
    assign(&mut state, "a10/chat", "eu", T0);
    for key in ["a1.k1", "a10.k1"] {
        state.apply(Command::RevokeTokens {
            key_name: key.into(),
            target: "clientId:bob".into(),
            issued_before_ms: T0,
        });
    }

    let response = state.apply(Command::DeleteApp {
        app_id: "a1".into(),
    });

    assert_eq!(response.outcome, Ok(Outcome::Done));
    assert!(state.catalog().app("a1").is_none());
    assert!(state.catalog().home("a1/chat").is_none());
    assert_eq!(
        state.catalog().revoked_before("a1.k1", "clientId:bob"),
        None
    );
    assert!(state.catalog().app("a10").is_some());
    assert!(state.catalog().home("a10/chat").is_some());
    assert_eq!(
        state.catalog().revoked_before("a10.k1", "clientId:bob"),
        Some(T0)
    );

    // The deleted home's epoch is retired: the channel comes back above it.
    let again = home_of(&assign(&mut state, "a1/chat", "eu", T0 - 10));
    assert!(again.epoch > old.epoch);
    assert_eq!(
        state
            .apply(Command::DeleteApp {
                app_id: "a1".into()
            })
            .outcome,
        Err(CommandError::NoSuchApp("a1".into()))
    );
}

#[test]
fn a_revocation_only_moves_forward_and_pruning_forgets_old_ones() {
    let mut state = ControlState::default();
    let revoke = |state: &mut ControlState, target: &str, ms: u64| {
        state.apply(Command::RevokeTokens {
            key_name: "a1.k1".into(),
            target: target.into(),
            issued_before_ms: ms,
        })
    };

    revoke(&mut state, "clientId:bob", T0 + 10);
    let older = revoke(&mut state, "clientId:bob", T0);
    revoke(&mut state, "channel:news", T0 + 50);
    let bad = revoke(&mut state, "bob", T0);

    assert_eq!(older.version, 1, "an older revocation is not a change");
    assert!(matches!(bad.outcome, Err(CommandError::Invalid { .. })));
    assert_eq!(
        state.catalog().revoked_before("a1.k1", "clientId:bob"),
        Some(T0 + 10)
    );

    let pruned = state.apply(Command::PruneRevocations { before_ms: T0 + 20 });

    assert_eq!(pruned.outcome, Ok(Outcome::Removed { count: 1 }));
    let left: Vec<Revocation> = state.catalog().revocations().collect();
    assert_eq!(
        left,
        [Revocation {
            key_name: "a1.k1".into(),
            target: "channel:news".into(),
            issued_before_ms: T0 + 50,
        }]
    );
}

#[test]
fn key_secrets_never_appear_in_debug_output() {
    let command = Command::CreateApp {
        app: app("a1", &["k1"]),
    };

    let text = format!("{command:?}");

    assert!(text.contains("a1.k1"));
    assert!(!text.contains("secret-k1"), "{text}");
}

// ----- versions and the change log

#[test]
fn every_update_takes_one_version_and_refusals_take_none() {
    let mut state = three_regions();
    assert_eq!(state.version(), 3);

    let assigned = assign(&mut state, "app/chat", "eu", T0);
    let refused = assign(&mut state, "bad", "eu", T0);

    assert_eq!(assigned.version, 4);
    assert_eq!(refused.version, 4);
    assert_eq!(state.catalog().version(), 4);
}

#[test]
fn changes_since_lists_every_later_update_in_order() {
    let mut state = three_regions();
    assign(&mut state, "app/chat", "eu", T0);

    let ChangesSince::Changes(changes) = state.changes_since(2) else {
        panic!("the log holds everything");
    };

    let versions: Vec<u64> = changes.iter().map(|c| c.version).collect();
    assert_eq!(versions, [3, 4]);
    assert!(matches!(&changes[0].update, Update::Region { name, .. } if name == "ap"));
    assert!(matches!(&changes[1].update, Update::Home { channel, .. } if channel == "app/chat"));
    assert_eq!(state.changes_since(4), ChangesSince::Changes(vec![]));
    assert_eq!(state.changes_since(99), ChangesSince::Changes(vec![]));
}

#[test]
fn a_watcher_behind_the_bounded_log_is_told_to_take_a_full_catalog() {
    let mut state = ControlState::new(3);
    register(&mut state, "eu");
    for i in 0..5 {
        assign(&mut state, &format!("app/ch{i}"), "eu", T0);
    }
    // Versions 1..=6 were made; the log holds 4, 5 and 6.

    assert_eq!(state.changes_since(2), ChangesSince::TooOld);
    assert_eq!(state.changes_since(0), ChangesSince::TooOld);
    let ChangesSince::Changes(changes) = state.changes_since(3) else {
        panic!("version 4 onwards is still held");
    };
    assert_eq!(changes.len(), 3);
}

#[test]
fn a_log_of_capacity_zero_only_serves_watchers_that_are_current() {
    let mut state = ControlState::new(0);
    register(&mut state, "eu");

    assert_eq!(state.changes_since(0), ChangesSince::TooOld);
    assert_eq!(state.changes_since(1), ChangesSince::Changes(vec![]));
}

/// Drives a busy mix of commands, for the tests that compare replicas and watchers.
fn busy_history(state: &mut ControlState) {
    for name in ["eu", "us", "ap"] {
        register(state, name);
    }
    state.apply(Command::CreateApp {
        app: app("a1", &["k1"]),
    });
    state.apply(Command::SetPlacementRules {
        rules: vec![rule(ANY_APP, "eu-only:", "eu")],
    });
    for i in 0..30u64 {
        let preferred = ["eu", "us", "ap"][i as usize % 3];
        assign(state, &format!("a1/ch{i}"), preferred, T0 + i);
        assign(state, &format!("a1/eu-only:{i}"), preferred, T0 + i);
    }
    let batch: Vec<String> = (0..10).map(|i| format!("a1/batch{i}")).collect();
    let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
    assign_batch(state, &batch, "ap", T0 + 5);
    touch_batch(state, &batch[..5], T0 + 30);
    state.apply(Command::RevokeTokens {
        key_name: "a1.k1".into(),
        target: "clientId:eve".into(),
        issued_before_ms: T0,
    });
    state.apply(Command::ExpireIdleHomes {
        now_ms: T0 + 20,
        idle_ms: 10,
    });
    state.apply(Command::DeclareRegionLost {
        region: "us".into(),
        now_ms: T0 + 40,
    });
    state.apply(Command::MoveHome {
        channel: "a1/ch29".into(),
        to_region: "eu".into(),
        now_ms: T0 + 50,
    });
}

#[test]
fn a_watcher_following_the_changes_ends_with_the_same_catalog() {
    let mut state = ControlState::default();
    register(&mut state, "eu");
    let mut watcher = state.catalog().clone();

    busy_history(&mut state);
    let ChangesSince::Changes(changes) = state.changes_since(watcher.version()) else {
        panic!("the default log holds this history");
    };
    for change in &changes {
        assert_eq!(watcher.apply_change(change), Ok(true));
    }

    assert_eq!(&watcher, state.catalog());
    // Replaying an old change is harmless; skipping one is refused.
    assert_eq!(watcher.apply_change(&changes[0]), Ok(false));
    let mut behind = Catalog::default();
    assert_eq!(
        behind.apply_change(&changes[3]),
        Err(VersionGap {
            have: 0,
            got: changes[3].version
        })
    );
}

#[test]
fn replicas_applying_the_same_commands_agree_exactly() {
    let mut a = ControlState::default();
    let mut b = ControlState::default();

    busy_history(&mut a);
    busy_history(&mut b);

    assert_eq!(a, b);
    // And a state survives its snapshot encoding unchanged.
    let bytes = rmp_serde::to_vec_named(&a).unwrap();
    let decoded: ControlState = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(decoded, a);
}

#[test]
fn a_state_restored_from_its_records_equals_the_original() {
    let mut state = ControlState::new(50);
    busy_history(&mut state);

    let restored = ControlState::restore(
        state.header(),
        state.catalog().records().collect::<Vec<_>>(),
        state.retained_changes().cloned().collect::<Vec<_>>(),
    );

    assert_eq!(restored, state);
}

#[test]
fn record_keys_are_distinct_across_kinds_and_fields() {
    let revocation = |key_name: &str, target: &str| Update::Revocation {
        key_name: key_name.into(),
        target: target.into(),
        issued_before_ms: None,
    };

    let a = revocation("a.b", "c/d").record_key();
    let b = revocation("a.b/c", "d").record_key();

    assert_ne!(a, b);
    assert!(revocation("x", "y").is_removal());
}

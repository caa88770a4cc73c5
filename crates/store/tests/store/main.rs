//! The store against real databases: the conformance suite of the `Store` trait on every
//! backend (SQLite in a file; PostgreSQL in a cluster each test starts, skipped without
//! PostgreSQL unless MERIDIAN_TEST_STRICT=1), and what is particular to each backend.

mod backend;
mod contents;
mod postgres;
mod sqlite;
mod suite;

/// Runs each named test of [`suite`] on each backend: `conformance::sqlite::NAME` and
/// `conformance::postgres::NAME`.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod conformance {
            mod sqlite {
                $(
                    #[tokio::test]
                    async fn $test() {
                        crate::suite::$test(&crate::backend::Backend::sqlite()).await;
                    }
                )*
            }
            mod postgres {
                $(
                    #[tokio::test]
                    async fn $test() {
                        if let Some(backend) = crate::backend::Backend::postgres() {
                            crate::suite::$test(&backend).await;
                        }
                    }
                )*
            }
        }
    };
}

conformance!(
    every_write_bumps_the_revision_by_one_and_failures_by_none,
    an_apply_that_changes_nothing_writes_nothing,
    a_rollout_control_is_kept_per_service_fed_as_a_change_and_goes_with_the_service,
    rollouts_are_recorded_per_region_and_version_with_their_events_and_go_with_the_service,
    applies_create_versions_and_rollback_copies_an_old_one,
    regions_in_use_cannot_be_deleted_and_index_follows_the_current_version,
    watch_yields_every_change_in_order_under_concurrent_writes,
    applies_arriving_together_commit_or_fail_each_on_their_own,
    versions_arriving_together_follow_each_other_and_index_their_regions,
    long_poll_returns_on_commit_or_times_out_empty,
    a_reopened_store_keeps_its_state_and_revision,
    a_certificate_lives_as_long_as_its_domain_claim,
    a_version_that_changes_domain_claims_records_a_domains_change_first,
    acme_accounts_and_ticket_keys_are_kept_and_replaced,
    secrets_are_versioned_referenced_only_when_they_exist_and_kept_while_in_use,
    an_org_secret_is_resolved_where_no_app_secret_shadows_it_and_rolls_only_those_services,
    a_backup_restored_into_an_empty_store_reads_the_same,
    a_bad_backup_is_refused_naming_what_is_wrong_and_restores_nothing,
    purges_are_numbered_without_gaps_kept_to_a_bound_and_fed_with_their_number,
    a_lease_has_one_holder_whose_token_grows_and_fences_its_writes,
    rollout_records_and_rollbacks_for_a_lease_term_that_is_over_are_refused,
);

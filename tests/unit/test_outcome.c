/* Unit tests for runtime/outcome.c: caps with their messages, the timer set/cancel rules, state
 * changes over a prior state, metric aggregation, reset and the JSON view. */
#include <jansson.h>
#include <string.h>
#include "wahook/common.h"
#include "wahook/outcome.h"
#include "wh_test.h"

static void test_actions_and_caps(void)
{
    wh_outcome_limits_t lim = {0};
    lim.max_actions = 3;
    wh_outcome_t out;
    CHECK_INT(wh_outcome_init(&out, &lim), WH_OK);
    CHECK_INT(out.limits.max_actions, 3);
    CHECK_INT(out.limits.max_timers, WH_OUTCOME_MAX_TIMERS); /* zero kept the default */
    CHECK(wh_outcome_is_empty(&out));
    char err[256];
    for (int i = 0; i < 3; i++)
        CHECK_INT(wh_outcome_add_action(&out, json_pack("{s:s,s:i}", "type", "alert", "i", i), err,
                                        sizeof(err)),
                  WH_OK);
    CHECK_INT(wh_outcome_add_action(&out, json_pack("{s:s}", "type", "alert"), err, sizeof(err)),
              WH_EFULL);
    CHECK_CONTAINS(err, "at most 3 per event");
    CHECK_INT(wh_outcome_add_action(&out, json_pack("{s:i}", "x", 1), err, sizeof(err)),
              WH_EINVAL);
    CHECK_INT(wh_outcome_add_action(&out, json_pack("{s:s}", "type", ""), err, sizeof(err)),
              WH_EINVAL);
    CHECK_INT(json_array_size(wh_outcome_actions(&out)), 3);
    CHECK_INT(json_integer_value(json_object_get(json_array_get(wh_outcome_actions(&out), 2), "i")),
              2);
    CHECK(!wh_outcome_is_empty(&out));
    wh_outcome_free(&out);

    /* The total size cap. */
    lim.max_actions = 0;
    lim.max_total_bytes = 1000;
    CHECK_INT(wh_outcome_init(&out, &lim), WH_OK);
    char big[600];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK_INT(wh_outcome_add_action(&out, json_pack("{s:s,s:s}", "type", "a", "t", big), err,
                                    sizeof(err)),
              WH_OK);
    CHECK_INT(wh_outcome_add_action(&out, json_pack("{s:s,s:s}", "type", "a", "t", big), err,
                                    sizeof(err)),
              WH_EFULL);
    CHECK_CONTAINS(err, "more than 1000 bytes in total");
    CHECK(out.bytes > 600 && out.bytes <= 1000);
    wh_outcome_free(&out);
}

static const char *timer_name(const wh_outcome_t *out, size_t i)
{
    return json_string_value(json_object_get(json_array_get(wh_outcome_timers(out), i), "name"));
}

static void test_timers(void)
{
    wh_outcome_limits_t lim = {0};
    lim.max_timers = 3;
    wh_outcome_t out;
    wh_outcome_init(&out, &lim);
    char err[256];
    CHECK_INT(wh_outcome_set_timer(&out, "remind", 1000, json_pack("{s:i}", "step", 1), err,
                                   sizeof(err)),
              WH_OK);
    /* Same name: replaced, not duplicated. */
    CHECK_INT(wh_outcome_set_timer(&out, "remind", 2000, NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(json_array_size(wh_outcome_timers(&out)), 1);
    json_t *t = json_array_get(wh_outcome_timers(&out), 0);
    CHECK_INT(json_integer_value(json_object_get(t, "due_at")), 2000);
    CHECK(json_object_get(t, "payload") == NULL);
    /* Cancel removes the pending set and records the cancel once. */
    CHECK_INT(wh_outcome_cancel_timer(&out, "remind", err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_cancel_timer(&out, "remind", err, sizeof(err)), WH_OK);
    CHECK_INT(json_array_size(wh_outcome_timers(&out)), 0);
    CHECK_INT(json_array_size(wh_outcome_cancelled(&out)), 1);
    /* Setting again undoes the cancel: each name is in one list only. */
    CHECK_INT(wh_outcome_set_timer(&out, "remind", 3000, NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(json_array_size(wh_outcome_cancelled(&out)), 0);
    CHECK_STR(timer_name(&out, 0), "remind");
    CHECK_INT(wh_outcome_set_timer(&out, "b", 1, NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_cancel_timer(&out, "c", err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_set_timer(&out, "d", 1, NULL, err, sizeof(err)), WH_EFULL);
    CHECK_CONTAINS(err, "at most 3 per event");
    CHECK_INT(wh_outcome_cancel_timer(&out, "e", err, sizeof(err)), WH_EFULL);
    /* Replacing an existing name is not a new timer. */
    CHECK_INT(wh_outcome_set_timer(&out, "b", 5, NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_set_timer(&out, "c", 5, NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_set_timer(&out, "", 5, NULL, err, sizeof(err)), WH_EINVAL);
    CHECK_INT(wh_outcome_set_timer(&out, "b", 5, json_array(), err, sizeof(err)), WH_EINVAL);
    wh_outcome_free(&out);
}

static void test_state(void)
{
    wh_outcome_limits_t lim = {0};
    lim.max_state_bytes = 50;
    wh_outcome_t out;
    wh_outcome_init(&out, &lim);
    char err[256];
    CHECK(wh_outcome_current_state(&out) == NULL);
    json_t *prior = json_pack("{s:i}", "step", 1);
    wh_outcome_set_prior_state(&out, prior);
    json_decref(prior);
    CHECK_INT(json_integer_value(json_object_get(wh_outcome_current_state(&out), "step")), 1);
    CHECK_INT(wh_outcome_state_change(&out), WH_STATE_UNCHANGED);
    CHECK(wh_outcome_is_empty(&out));

    CHECK_INT(wh_outcome_set_state(&out, json_pack("{s:i}", "step", 2), err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_state_change(&out), WH_STATE_SET);
    CHECK_INT(json_integer_value(json_object_get(wh_outcome_current_state(&out), "step")), 2);
    CHECK_INT(wh_outcome_set_state(&out, json_pack("{s:s}", "x", "0123456789012345678901234567890"
                                                                "1234567890123456789012345678901"
                                                                "234567890123456789"),
                                   err, sizeof(err)),
              WH_EFULL);
    CHECK_CONTAINS(err, "state is too large");
    CHECK_INT(json_integer_value(json_object_get(wh_outcome_current_state(&out), "step")), 2);
    CHECK_INT(wh_outcome_set_state(&out, json_array(), err, sizeof(err)), WH_EINVAL);
    CHECK_INT(wh_outcome_set_state(&out, NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_state_change(&out), WH_STATE_CLEARED);
    CHECK(wh_outcome_current_state(&out) == NULL);
    CHECK(!wh_outcome_is_empty(&out));

    /* Reset forgets the change but keeps the prior state for a retry. */
    wh_outcome_reset(&out);
    CHECK_INT(wh_outcome_state_change(&out), WH_STATE_UNCHANGED);
    CHECK_INT(json_integer_value(json_object_get(wh_outcome_current_state(&out), "step")), 1);
    CHECK(wh_outcome_is_empty(&out));
    wh_outcome_free(&out);
}

static void test_facts_metrics_json(void)
{
    wh_outcome_limits_t lim = {0};
    lim.max_facts = 2;
    lim.max_metrics = 2;
    wh_outcome_t out;
    wh_outcome_init(&out, &lim);
    char err[256];
    CHECK_INT(wh_outcome_add_fact(&out, "handoff", NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_add_fact(&out, "csat", json_pack("{s:i}", "score", 5), err, sizeof(err)),
              WH_OK);
    CHECK_INT(wh_outcome_add_fact(&out, "csat", json_pack("{s:i}", "score", 4), err, sizeof(err)),
              WH_EFULL);
    CHECK_CONTAINS(err, "at most 2 per event");
    CHECK_INT(wh_outcome_add_fact(&out, "", NULL, err, sizeof(err)), WH_EINVAL);

    CHECK_INT(wh_outcome_add_metric(&out, "replies", json_pack("{s:s}", "flow", "a"), err,
                                    sizeof(err)),
              WH_OK);
    CHECK_INT(wh_outcome_add_metric(&out, "replies", json_pack("{s:s}", "flow", "a"), err,
                                    sizeof(err)),
              WH_OK);
    CHECK_INT(wh_outcome_add_metric(&out, "replies", NULL, err, sizeof(err)), WH_OK);
    CHECK_INT(wh_outcome_add_metric(&out, "replies", json_pack("{s:s}", "flow", "a"), err,
                                    sizeof(err)),
              WH_OK);
    CHECK_INT(json_array_size(wh_outcome_metrics(&out)), 2);
    CHECK_INT(json_integer_value(json_object_get(json_array_get(wh_outcome_metrics(&out), 0),
                                                 "value")),
              3);
    CHECK_INT(wh_outcome_add_metric(&out, "other", NULL, err, sizeof(err)), WH_EFULL);

    wh_outcome_add_action(&out, json_pack("{s:s,s:s}", "type", "send_text", "to", "1"), err,
                          sizeof(err));
    wh_outcome_set_timer(&out, "t", 99, NULL, err, sizeof(err));
    wh_outcome_cancel_timer(&out, "u", err, sizeof(err));
    wh_outcome_set_state(&out, json_pack("{s:b}", "ok", 1), err, sizeof(err));
    json_t *j = wh_outcome_to_json(&out);
    char *s = json_dumps(j, JSON_COMPACT);
    CHECK_STR(s, "{\"actions\":[{\"type\":\"send_text\",\"to\":\"1\"}],"
                 "\"timers\":[{\"name\":\"t\",\"due_at\":99}],\"cancelled\":[\"u\"],"
                 "\"state\":{\"change\":\"set\",\"value\":{\"ok\":true}},"
                 "\"facts\":[{\"kind\":\"handoff\",\"fields\":{}},{\"kind\":\"csat\","
                 "\"fields\":{\"score\":5}}],"
                 "\"metrics\":[{\"name\":\"replies\",\"labels\":{\"flow\":\"a\"},\"value\":3},"
                 "{\"name\":\"replies\",\"labels\":{},\"value\":1}]}");
    free(s);
    json_decref(j);

    wh_outcome_reset(&out);
    CHECK(wh_outcome_is_empty(&out));
    j = wh_outcome_to_json(&out);
    s = json_dumps(j, JSON_COMPACT);
    CHECK_STR(s, "{\"actions\":[],\"timers\":[],\"cancelled\":[],\"state\":{\"change\":"
                 "\"unchanged\"},\"facts\":[],\"metrics\":[]}");
    free(s);
    json_decref(j);
    wh_outcome_free(&out);
    wh_outcome_free(&out); /* freeing twice (a zeroed struct) is harmless */
}

int main(void)
{
    test_actions_and_caps();
    test_timers();
    test_state();
    test_facts_metrics_json();
    WH_TEST_MAIN_END();
}

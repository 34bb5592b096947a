"""The fault checker's own tests: each invariant on a made-up log, broken
and kept. `python3 -m unittest bench/scripts/test_faults_check.py`
(tests/faults.rs runs it in `cargo test`)."""
import os, sys, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faults_check import check, recovery  # noqa: E402


def conn(c, k, t, present=False):
    return {"e": "connack", "c": c, "k": k, "node": 1, "t": t, "present": present}


def sent(pub, seq, t, acked=True):
    out = [{"e": "send", "c": pub, "seq": seq, "t": t}]
    if acked:
        out.append({"e": "puback", "c": pub, "seq": seq, "t": t + 0.01})
    return out


def got(c, k, pub, seq, t):
    return {"e": "deliver", "c": c, "k": k, "pub": pub, "seq": seq, "t": t}


SUBSCRIBED = [conn("s", 1, 0.0), {"e": "suback", "c": "s", "k": 1, "t": 0.1}]


def broken(events, **kw):
    return {k: v for k, v in check(events, ["s"], **kw).items() if v}


class Checker(unittest.TestCase):
    def test_a_clean_run_breaks_nothing(self):
        ev = SUBSCRIBED + sent("p", 1, 1) + sent("p", 2, 2) + [got("s", 1, "p", 1, 1.1), got("s", 1, "p", 2, 2.1)]
        self.assertEqual(broken(ev), {})

    def test_an_acknowledged_message_that_never_arrives_is_lost(self):
        ev = SUBSCRIBED + sent("p", 1, 1) + sent("p", 2, 2) + [got("s", 1, "p", 2, 2.1)]
        self.assertEqual(len(broken(ev)["acked_lost"]), 1)

    def test_unacknowledged_or_earlier_messages_may_be_missing(self):
        ev = sent("p", 1, 0.0) + SUBSCRIBED + sent("p", 2, 1, acked=False)
        self.assertEqual(broken(ev), {})

    def test_first_copies_out_of_order_break_order_and_duplicates_do_not(self):
        ev = SUBSCRIBED + sent("p", 1, 1) + sent("p", 2, 2)
        self.assertIn("order", broken(ev + [got("s", 1, "p", 2, 2.1), got("s", 1, "p", 1, 2.2)]))
        again = ev + [got("s", 1, "p", 1, 1.1), got("s", 1, "p", 2, 2.1), got("s", 1, "p", 1, 2.2)]
        self.assertEqual(broken(again), {})

    def test_a_late_copy_after_a_move_is_admitted_not_an_order_violation(self):
        ev = SUBSCRIBED + sent("p", 1, 1) + sent("p", 2, 2)
        late = [got("s", 2, "p", 2, 2.1), got("s", 2, "p", 1, 2.2)]
        moved = broken(ev + [conn("s", 2, 1.5, present=True)] + late)
        self.assertNotIn("order", moved)
        self.assertEqual(len(moved["order_after_move"]), 1)
        # Long after the move, the same is a broken promise.
        stale = ev[:2] + [conn("s", 2, 0.2, present=True)] + ev[2:]
        self.assertIn("order", broken(stale + sent("p", 3, 30) + sent("p", 4, 31)
                                      + [got("s", 2, "p", 4, 31.1), got("s", 2, "p", 3, 31.2)]))

    def test_order_across_a_publishers_reconnection_is_admitted_not_within_one(self):
        first = [{"e": "send", "c": "p", "k": 1, "seq": 1, "t": 1}, {"e": "puback", "c": "p", "seq": 1, "t": 1.01}]
        again = [{"e": "send", "c": "p", "k": 2, "seq": 2, "t": 2}, {"e": "puback", "c": "p", "seq": 2, "t": 2.01}]
        late = [got("s", 1, "p", 2, 2.1), got("s", 1, "p", 1, 2.2)]
        across = broken(SUBSCRIBED + first + again + late)
        self.assertNotIn("order", across)
        self.assertEqual(len(across["order_across_publisher_connections"]), 1)
        same = [{**again[0], "k": 1}, again[1]]
        self.assertIn("order", broken(SUBSCRIBED + first + same + late))

    def test_an_old_connection_that_delivers_after_a_takeover_is_a_second_owner(self):
        ev = SUBSCRIBED + sent("p", 1, 1) + [conn("s", 2, 2.0, present=True), got("s", 2, "p", 1, 2.1)]
        late = ev + [got("s", 1, "p", 1, 3.0)]
        self.assertEqual(broken(late), {}, "sent before the takeover, arrived late: allowed")
        after = ev + sent("p", 2, 2.5) + [got("s", 2, "p", 2, 2.6), got("s", 1, "p", 2, 2.7)]
        self.assertIn("two_owners", broken(after))

    def test_more_connections_of_a_user_served_at_once_than_its_cap(self):
        ev = [conn("cap-0", 1, 0.0), conn("cap-1", 1, 1.0), conn("cap-2", 1, 2.0)]
        heard = [{"e": "alive", "c": c, "k": 1, "sent": 4.0, "t": 4.01} for c in ("cap-0", "cap-1", "cap-2")]
        self.assertIn("over_cap", broken(ev + heard, cap_user="cap", cap=2))
        evicted = ev + heard[1:] + [{"e": "alive", "c": "cap-0", "k": 1, "sent": 2.1, "t": 2.2}]
        self.assertEqual(broken(evicted, cap_user="cap", cap=2), {})

    def test_presence_must_list_what_the_clients_hold(self):
        ev = [conn("cap-0", 1, 0.0), {"e": "presence", "user": "cap", "node": 1, "t": 9, "clients": ["cap-0"]}]
        self.assertEqual(broken(ev, cap_user="cap", cap=2), {})
        stale = ev + [{"e": "presence", "user": "cap", "node": 2, "t": 9, "clients": ["cap-0", "cap-9"]}]
        self.assertIn("presence", broken(stale, cap_user="cap", cap=2))

    def test_recovery_measures_takeovers_and_a_nodes_return(self):
        ev = [{"e": "connect", "c": "s", "k": 2, "node": 2, "t": 10.0},
              {"e": "connack", "c": "s", "k": 2, "node": 2, "t": 13.5, "present": True},
              {"e": "connect", "c": "x", "k": 1, "node": 1, "t": 14.5},
              {"e": "connack", "c": "x", "k": 1, "node": 1, "t": 15.0, "present": False},
              {"e": "connect", "c": "y", "k": 1, "node": 1, "t": 16.2},
              {"e": "connack", "c": "y", "k": 1, "node": 1, "t": 16.5, "present": False}]
        r = recovery(ev, [("pause n1", 9.0, 16.0)])["pause n1"]
        self.assertAlmostEqual(r["takeover_s"], 3.5)
        self.assertAlmostEqual(r["back_s"], 0.5, msg="the first CONNECT sent after the heal")


if __name__ == "__main__":
    unittest.main()

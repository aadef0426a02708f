-- Assertions: t.ok, t.eq, t.neq, t.fail, t.skip (t.result is used for real in
-- guests_test.lua::test_emulate, and t.skip for real in paging_test.lua on
-- hosts that refuse 32-bit paging).
--
-- A failing assertion records the test's outcome and raises an error. The
-- demonstrations below catch that error with pcall to look at the message.
-- pcall does not undo the recorded outcome: the runner ignores it only because
-- the test function then returns normally (harness/src/script/runner.rs: a
-- test that returns is a PASS). So each demonstration is a test of its own and
-- ends right after its checks; real assertions follow the pcall, never an
-- uncaught error.
local guest = require("lunavm.guest")

budget = { time = "1s", wall = "20s" }

function test_passing_assertions()
  t.ok(true)
  t.ok(0, "0 is truthy in Lua")
  t.ok("")
  t.eq(1, 1)
  t.eq("a", "a")
  t.eq(0xffffffffffffffff, -1, "the same 64-bit integer")
  t.neq(1, 2)
  t.neq("1", 1, "a string is not a number")
  t.neq(nil, false)
end

-- Each failing assertion raises a message that names this file and line and
-- shows the values.
function test_failing_assertions_raise()
  local ok, err = pcall(t.ok, false, "why")
  t.eq(ok, false)
  t.ok(err:find("^[^:]*assertions_test%.lua:%d+: t%.ok failed: value is false — why$"), err)

  ok, err = pcall(t.ok, nil)
  t.eq(ok, false)
  t.ok(err:find("t.ok failed: value is nil", 1, true), err)

  ok, err = pcall(t.eq, 3, 4, "exit status")
  t.eq(ok, false)
  t.ok(err:find("t.eq failed: left 3 (0x3), right 4 (0x4) — exit status", 1, true), err)

  ok, err = pcall(t.eq, "x", "y")
  t.eq(ok, false)
  t.ok(err:find('t.eq failed: left "x", right "y"', 1, true), err)

  ok, err = pcall(t.neq, 5, 5)
  t.eq(ok, false)
  t.ok(err:find("t.neq failed: both are 5 (0x5)", 1, true), err)
end

function test_fail_raises()
  local ok, err = pcall(t.fail, "the guest printed nonsense")
  t.eq(ok, false)
  t.ok(err:find("^[^:]*assertions_test%.lua:%d+: the guest printed nonsense$"), err)
end

function test_skip_raises()
  local ok, err = pcall(t.skip, "not on this host")
  t.eq(ok, false)
  t.ok(err:find("^[^:]*assertions_test%.lua:%d+: not on this host$"), err)
end

-- t.result reports a named result of its own; a bad status is an error (not
-- an assertion: nothing is recorded).
function test_result_checks_its_status()
  t.ok(guest.expect_error(t.result, "x", "maybe", ""):find('status must be "pass", "fail" or "skip"', 1, true))
  t.result("reported", "pass", "one result of this test, shown as assertions_test.lua::test_result_checks_its_status/reported")
end

-- Virtual time: clock.now and clock.step, and what runs cost. No host time
-- enters: every port exit costs exactly 1000 ns (harness/src/clock.rs), so the
-- numbers below are exact.
local guest = require("lunavm.guest")

budget = { time = "1s", wall = "20s" }

function test_step_moves_now_by_exactly_the_step()
  vm.boot{guest = "exits", cmdline = "count=1000"}
  t.eq(clock.now(), 0, "nothing ran yet")
  clock.step(1234)
  t.eq(clock.now(), 1234)
  clock.step("20ms")
  t.eq(clock.now(), 1234 + 20000000)
  clock.step("3us")
  t.eq(clock.now(), 1234 + 20000000 + 3000)
  clock.step(0)
  t.eq(clock.now(), 20004234)
  t.ok(guest.expect_error(clock.step, -1):find("duration", 1, true))
  t.ok(guest.expect_error(clock.step, "5 parsecs"):find("not a duration", 1, true))
end

-- `exits count=N` is a loop of `outb` to port 0x80: each one is a port exit.
function test_runs_cost_1000ns_per_port_exit()
  vm.boot{guest = "exits", cmdline = "count=1000"}
  local t0, e0 = clock.now(), vm.exits()
  local ev = vm.run{exits = 100}
  t.eq(ev.reason, "exit_budget")
  local e1 = vm.exits()
  t.eq(e1.total - e0.total, 100)
  t.eq(e1.pio_out - e0.pio_out, 100)
  t.eq(clock.now() - t0, 100 * 1000)
  -- Stepping does not run the guest: no exits.
  clock.step("1ms")
  t.eq(vm.exits().total, e1.total)
  t.eq(clock.now() - t0, 100 * 1000 + 1000000)
end

-- A time= condition stops after exactly that much virtual time.
function test_time_condition_is_exact()
  vm.boot{guest = "exits", cmdline = "count=1000"}
  clock.step("5us")
  local ev = vm.run{time = "50us"}
  t.eq(ev.reason, "time_budget")
  t.eq(ev.time, 50000)
  t.eq(clock.now(), 55000)
  ev = vm.run{time = 7000}
  t.eq(ev.time, 7000)
  t.eq(clock.now(), 62000)
end

-- The 16550 UART at 0x3f8: serial.write (input), serial.read, serial.output and
-- serial.expect (output), and the serial= stop condition of vm.run.
local guest = require("lunavm.guest")

budget = { time = "2s", wall = "20s" }

-- poke input=1: at step 9 the guest reads a line from the serial port and
-- prints "got: LINE".
function test_write_feeds_the_guest()
  guest.boot_to_sync({guest = "poke", cmdline = "input=1"}, 9)
  serial.write("hello lua\n")
  t.eq(serial.expect("got: [^\n]*\n"), "got: hello lua\n")
end

-- Without input, the guest waits for it (polling LSR) until serial.write
-- provides a whole line.
function test_guest_waits_for_input()
  guest.boot_to_sync({guest = "poke", cmdline = "input=1"}, 9)
  serial.expect("input\\? \n")
  local ev = vm.run{time = "100us"}
  t.eq(ev.reason, "time_budget")
  t.ok(not guest.has_line("got: "), "nothing read yet")
  serial.write("ab")
  serial.write("c\n")
  guest.run_to_sync(10)
  guest.expect_line("got: abc")
end

function test_read_consumes_output()
  vm.boot{guest = "poke"}
  guest.run_to_sync(2)
  t.eq(serial.read(), "buf: poke buffer\nbuf[200]: 0x00\n")
  t.eq(serial.read(), "", "already consumed")
  guest.run_to_sync(3)
  t.eq(serial.read(), "value: 0x1122334455667788\n")
  -- output() is everything, read or not.
  t.eq(serial.output(), "buf: poke buffer\nbuf[200]: 0x00\nvalue: 0x1122334455667788\n")
end

function test_expect_runs_to_a_match()
  vm.boot{guest = "poke"}
  -- Runs the guest (through the sync points: expect does not stop at them)
  -- until the pattern matches, and consumes output up to the match's end.
  -- The pattern is tested as each byte arrives: end it with \n for a whole
  -- line, else it matches a prefix.
  t.eq(serial.expect("value: 0x[0-9a-f]+\n"), "value: 0x1122334455667788\n")
  t.eq(serial.read(), "")
  t.eq(serial.expect("alias: \\w"), "alias: a")
  t.eq(serial.read(), "", "the guest stopped right after the match")
  t.eq(serial.expect("rbx: \\S+ ", "1ms"), "rbx: 0x0 ")
  t.eq(serial.expect("msr 0x174: 0x10\n"), "msr 0x174: 0x10\n")
end

function test_expect_timeout_error()
  guest.boot_to_sync({guest = "poke", cmdline = "input=1"}, 9)
  -- The guest waits for input that never comes: the pattern cannot appear.
  local before = clock.now()
  local ok, err = pcall(serial.expect, "got: ", "50us")
  t.eq(ok, false)
  t.ok(err:find("serial_test%.lua:%d+: serial%.expect: /got: / not seen within"), err)
  t.ok(err:find("unread output: \"buf: poke buffer", 1, true), err)
  t.ok(err:find("input%? \\n\"$"), err)
  t.eq(clock.now() - before, 50000, "the timeout is virtual time")
  -- Nothing was consumed: the unread output is still there.
  t.eq(serial.read():sub(-8), "input? \n")
end

function test_expect_error_when_the_guest_stops()
  vm.boot{guest = "hello", cmdline = "status=4"}
  local msg = guest.expect_error(serial.expect, "never printed")
  t.ok(msg:find("the guest stopped", 1, true), msg)
  t.ok(msg:find("Hello from lunavm guest 'hello'!", 1, true), "the message shows the unread output: " .. msg)
end

function test_run_until_serial_pattern()
  vm.boot{guest = "poke"}
  local ev = vm.run{serial = "alias: [a-z ]+\n"}
  t.eq(ev.reason, "serial")
  t.eq(ev.match, "alias: alias page\n")
  t.ok(not guest.has_line("rbx: 0x0 r12: 0x0"), "stopped as soon as the line was complete")
  -- The match is consumed like serial.expect's.
  t.eq(serial.read(), "")
  ev = vm.run{serial = "target \\w+\n"}
  t.eq(ev.match, "target called\n")
  t.eq(serial.read(), "")
end

-- lunavm.guest: helpers for scenarios that drive guests written with the
-- lunavm guest runtime (sync points, exits, serial lines, expected errors).
local guest = {}

-- "file:line: " of the innermost caller outside this library (the test's
-- line), for failure messages: t.fail names this file's line itself.
local function caller()
  for level = 3, 12 do
    local _, where = pcall(error, "", level)
    if where ~= "" and not where:find("^lunavm%.guest:") then
      return where
    end
  end
  return ""
end

--- Boots (`opts` as vm.boot's) and runs to sync point `id`; returns the
--- sync event (ev.args[1] is the id, ev.args[2..] the guest's arguments).
function guest.boot_to_sync(opts, id)
  vm.boot(opts)
  return guest.run_to_sync(id)
end

--- Runs to sync point `id` and returns its event; fails the test if the guest
--- stops for another reason first.
function guest.run_to_sync(id)
  local ev = vm.run{sync = id}
  if ev.reason ~= "sync" then
    t.fail(string.format("%sexpected sync point %d, the guest stopped: %s %s",
      caller(), id, ev.reason, ev.message or ev.status or ""))
  end
  return ev
end

--- Runs the guest to its end and checks it finished with `status` (default 0)
--- through the debug-exit port or ucall DONE.
function guest.finish(status)
  status = status or 0
  local ev = vm.run{}
  if ev.reason ~= "exit" and ev.reason ~= "done" then
    t.fail(string.format("%sexpected the guest to finish, it stopped: %s %s",
      caller(), ev.reason, ev.message or ""))
  end
  t.eq(ev.status, status, caller() .. "guest exit status")
  return ev
end

--- The lines of `s` (default: everything the guest wrote to the serial port),
--- without their "\n", as an array. A last line without "\n" is included.
function guest.lines(s)
  s = s or serial.output()
  local out = {}
  for line in s:gmatch("([^\n]*)\n") do
    out[#out + 1] = line
  end
  local rest = s:match("[^\n]+$")
  if rest then
    out[#out + 1] = rest
  end
  return out
end

--- Whether the guest's serial output has `line` as a whole line (exact text,
--- no pattern).
function guest.has_line(line)
  for _, l in ipairs(guest.lines()) do
    if l == line then
      return true
    end
  end
  return false
end

--- Fails the test unless the guest's serial output has `line` as a whole line;
--- the message shows the output.
function guest.expect_line(line)
  if not guest.has_line(line) then
    t.fail(string.format("%sno serial line %q in the guest's output:\n%s",
      caller(), line, serial.output()))
  end
end

--- Calls `fn(...)` and returns the message of the error it raises (a string,
--- e.g. "file.lua:12: mem.read32: address ... is outside guest RAM"); fails
--- the test if `fn` returns normally.
function guest.expect_error(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then
    t.fail(caller() .. "expected an error, the call returned normally")
  end
  return tostring(err)
end

return guest

-- lunavm.guest: helpers for scenarios that drive guests written with the
-- lunavm guest runtime (sync points, exits).
local guest = {}

--- Boots `name` (options as vm.boot) and runs to sync point `id`; returns the
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
    t.fail(string.format("expected sync point %d, the guest stopped: %s %s",
      id, ev.reason, ev.message or ev.status or ""))
  end
  return ev
end

--- Runs the guest to its end and checks it finished with `status` (default 0)
--- through the debug-exit port or ucall DONE.
function guest.finish(status)
  status = status or 0
  local ev = vm.run{}
  if ev.reason ~= "exit" and ev.reason ~= "done" then
    t.fail(string.format("expected the guest to finish, it stopped: %s %s",
      ev.reason, ev.message or ""))
  end
  t.eq(ev.status, status, "guest exit status")
  return ev
end

return guest

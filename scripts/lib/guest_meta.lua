---@meta lunavm.guest
-- LuaLS annotations for the helper module `require("lunavm.guest")` (the code
-- is lib/guest.lua; this file is never run).

---Helpers for scenarios that drive guests written with the lunavm guest
---runtime: sync points, exits, serial lines, expected errors.
---@class lunavm.guest
local guest = {}

---Boots (options as `vm.boot`) and runs to sync point `id`; returns the sync
---event (`ev.args[1]` is the id, `ev.args[2..]` the guest's arguments).
---@param opts lunavm.BootOptions
---@param id integer
---@return lunavm.Event event A "sync" event.
function guest.boot_to_sync(opts, id) end

---Runs to sync point `id` and returns its event; fails the test if the guest
---stops for another reason first.
---@param id integer
---@return lunavm.Event event A "sync" event.
function guest.run_to_sync(id) end

---Runs the guest to its end and checks it finished with `status` (default 0)
---through the debug-exit port or ucall DONE.
---@param status? integer
---@return lunavm.Event event An "exit" or "done" event.
function guest.finish(status) end

---The lines of `s` (default: everything the guest wrote to the serial port),
---without their "\n". A last line without "\n" is included.
---@param s? string
---@return string[] lines
function guest.lines(s) end

---Whether the guest's serial output has `line` as a whole line (exact text).
---@param line string
---@return boolean
function guest.has_line(line) end

---Fails the test unless the guest's serial output has `line` as a whole line.
---@param line string
function guest.expect_line(line) end

---Calls `fn(...)` and returns the message of the error it raises; fails the
---test if `fn` returns normally.
---
---Example: `t.ok(guest.expect_error(mem.read8, -1):find("outside guest RAM", 1, true))`
---@param fn function
---@param ... any Its arguments.
---@return string message
function guest.expect_error(fn, ...) end

return guest

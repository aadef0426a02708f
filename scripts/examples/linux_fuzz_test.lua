-- The Linux driver-fuzzing scenario (scripts/fuzz/linux_virtio_net.lua), as
-- `lunavm fuzz` runs it: fuzz.replay boots the test-suite kernel once (its
-- fuzz_setup, in a machine of its own), then feeds one input from the fuzz
-- point with the scenario's breakpoint coverage and crash breakpoints in
-- place. The input is the seed corpus's ICMP echo request
-- (corpora/linux_virtio_net/seed-icmp-echo: mode 2, checksums fixed by the
-- scenario), which the kernel takes from virtio-net's receive queue up to
-- icmp_echo and answers.

budget = { time = "60s", wall = "300s" }

-- The scenario and the seed, relative to this file's folder (scripts/examples).
-- (`arg` is set when the test runs; the listing pass loads the file without it.)
local here = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "scripts/examples"
local SCENARIO = here .. "/../fuzz/linux_virtio_net.lua"
local SEED = here .. "/../../corpora/linux_virtio_net/seed-icmp-echo"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return data
end

function test_an_icmp_echo_frame_runs_the_receive_path_to_a_clean_end()
  local input = read(SEED)
  t.eq(input:byte(1), 6, "mode 2 (after the IPv4 header), checksums fixed")
  t.eq(input:byte(2), 1, "ICMP")
  local v = fuzz.replay(SCENARIO, input)
  -- The run ended where the kernel, done with the frame and the card's
  -- interrupt, returns to /init: the scenario's hook, not the budget.
  t.eq(v.class, "ok", v.title)
  t.eq(v.reason, "scenario", v.title)
  t.ok(v.vtime < 1000000, "well inside the 10 ms budget: " .. v.vtime .. " ns")
  -- The frame went through the instrumented receive path: virtio-net,
  -- GRO, IPv4, ICMP and the reply (hundreds of basic blocks).
  t.ok(v.blocks > 100, "blocks reached: " .. v.blocks)
  -- The interrupt, its acknowledgement and the reply's notification.
  t.ok(v.exits >= 5, "exits: " .. v.exits)
  t.ok(not v.serial:find("BUG:") and not v.serial:find("WARNING:"), v.serial)
end

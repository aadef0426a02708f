-- lunavm.net: Ethernet, ARP, IPv4 and ICMP frames built and parsed in Lua,
-- with the Internet checksum, and a helper that runs the guest until it sends
-- a frame (through the virtio-net device: virtio.send / virtio.recv).
-- Addresses are binary strings (6 bytes for a MAC, 4 for an IPv4 address):
-- net.mac("02:00:00:00:00:01") and net.ip("10.0.2.2") make them.
local net = {}

net.ETH_IPV4 = 0x0800
net.ETH_ARP = 0x0806
net.IP_ICMP = 1
net.ARP_REQUEST = 1
net.ARP_REPLY = 2
net.ICMP_ECHO_REPLY = 0
net.ICMP_ECHO_REQUEST = 8
net.BROADCAST = string.rep("\xff", 6)

--- "02:4c:55:4e:41:01" as 6 bytes.
function net.mac(s)
  local b = {}
  for h in s:gmatch("%x%x") do b[#b + 1] = string.char(tonumber(h, 16)) end
  if #b ~= 6 then error("net.mac: not a MAC address: " .. tostring(s), 2) end
  return table.concat(b)
end

--- 6 bytes as "02:4c:55:4e:41:01".
function net.mac_str(b)
  return (b:gsub(".", function(c) return string.format("%02x:", c:byte()) end):sub(1, -2))
end

--- "10.0.2.15" as 4 bytes.
function net.ip(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then error("net.ip: not an IPv4 address: " .. tostring(s), 2) end
  return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

--- 4 bytes as "10.0.2.15".
function net.ip_str(b)
  return string.format("%d.%d.%d.%d", b:byte(1, 4))
end

--- The Internet checksum (RFC 1071) of `bytes`: the ones' complement of the
--- ones' complement sum of its 16-bit big-endian words (an odd length is
--- padded with a zero byte). Data that carries its own correct checksum
--- gives 0.
function net.checksum(bytes)
  local sum = 0
  for i = 1, #bytes - 1, 2 do
    sum = sum + (bytes:byte(i) << 8) + bytes:byte(i + 1)
  end
  if #bytes % 2 == 1 then sum = sum + (bytes:byte(#bytes) << 8) end
  while sum > 0xffff do sum = (sum & 0xffff) + (sum >> 16) end
  return (~sum) & 0xffff
end

--- An Ethernet frame: {dst=MAC, src=MAC, type=N, payload=BYTES}.
function net.ethernet(f)
  return f.dst .. f.src .. string.pack(">I2", f.type) .. (f.payload or "")
end

--- {dst, src, type, payload} of an Ethernet frame, or nil when it is shorter
--- than its header.
function net.parse_ethernet(frame)
  if #frame < 14 then return nil end
  return {
    dst = frame:sub(1, 6), src = frame:sub(7, 12),
    type = string.unpack(">I2", frame, 13), payload = frame:sub(15),
  }
end

--- An ARP packet for IPv4 over Ethernet: {op=1|2, sha=MAC, spa=IP, tha=MAC, tpa=IP}
--- (tha defaults to zeros).
function net.arp(a)
  return string.pack(">I2I2BBI2", 1, net.ETH_IPV4, 6, 4, a.op)
    .. a.sha .. a.spa .. (a.tha or string.rep("\0", 6)) .. a.tpa
end

--- {op, sha, spa, tha, tpa} of an ARP packet, or nil when it is not IPv4
--- over Ethernet.
function net.parse_arp(p)
  if #p < 28 then return nil end
  local htype, ptype, hlen, plen, op = string.unpack(">I2I2BBI2", p)
  if htype ~= 1 or ptype ~= net.ETH_IPV4 or hlen ~= 6 or plen ~= 4 then return nil end
  return { op = op, sha = p:sub(9, 14), spa = p:sub(15, 18), tha = p:sub(19, 24), tpa = p:sub(25, 28) }
end

--- A broadcast ARP request frame: who has `target_ip`? tell `src_ip` at `src_mac`.
function net.arp_request(src_mac, src_ip, target_ip)
  return net.ethernet{
    dst = net.BROADCAST, src = src_mac, type = net.ETH_ARP,
    payload = net.arp{ op = net.ARP_REQUEST, sha = src_mac, spa = src_ip, tpa = target_ip },
  }
end

--- An IPv4 packet: {src=IP, dst=IP, proto=N, payload=BYTES, id=0, ttl=64};
--- a 20-byte header with its checksum, Don't Fragment set.
function net.ipv4(p)
  local payload = p.payload or ""
  local header = string.pack(">BBI2I2I2BBI2", 0x45, 0, 20 + #payload, p.id or 0, 0x4000,
    p.ttl or 64, p.proto, 0) .. p.src .. p.dst
  local sum = net.checksum(header)
  return header:sub(1, 10) .. string.pack(">I2", sum) .. header:sub(13) .. payload
end

--- {version, ihl, total_length, id, ttl, proto, checksum, src, dst,
--- header_ok, payload} of an IPv4 packet (header_ok: its header checksum is
--- right; payload cut to total_length), or nil when it is not IPv4.
function net.parse_ipv4(pkt)
  if #pkt < 20 then return nil end
  local vihl, _, total, id, _, ttl, proto, sum = string.unpack(">BBI2I2I2BBI2", pkt)
  local version, ihl = vihl >> 4, (vihl & 0xf) * 4
  if version ~= 4 or ihl < 20 or #pkt < ihl then return nil end
  return {
    version = version, ihl = ihl, total_length = total, id = id, ttl = ttl, proto = proto,
    checksum = sum, src = pkt:sub(13, 16), dst = pkt:sub(17, 20),
    header_ok = net.checksum(pkt:sub(1, ihl)) == 0,
    payload = pkt:sub(ihl + 1, math.max(ihl, math.min(total, #pkt))),
  }
end

--- An ICMP echo message with its checksum: {type=8 (request) or 0, code=0,
--- id=N, seq=N, payload=BYTES}.
function net.icmp_echo(e)
  local body = string.pack(">BBI2I2I2", e.type or net.ICMP_ECHO_REQUEST, e.code or 0, 0,
    e.id or 0, e.seq or 0) .. (e.payload or "")
  return body:sub(1, 2) .. string.pack(">I2", net.checksum(body)) .. body:sub(5)
end

--- {type, code, checksum, id, seq, payload, checksum_ok} of an ICMP message
--- (id and seq as an echo's), or nil when shorter than 8 bytes.
function net.parse_icmp(m)
  if #m < 8 then return nil end
  local ty, code, sum, id, seq = string.unpack(">BBI2I2I2", m)
  return {
    type = ty, code = code, checksum = sum, id = id, seq = seq,
    payload = m:sub(9), checksum_ok = net.checksum(m) == 0,
  }
end

--- An Ethernet frame with an ICMP echo request: {src_mac, dst_mac, src_ip,
--- dst_ip, id, seq, payload}.
function net.ping_frame(p)
  return net.ethernet{
    dst = p.dst_mac, src = p.src_mac, type = net.ETH_IPV4,
    payload = net.ipv4{
      src = p.src_ip, dst = p.dst_ip, proto = net.IP_ICMP, id = p.ip_id,
      payload = net.icmp_echo{ id = p.id, seq = p.seq, payload = p.payload },
    },
  }
end

--- Every layer of a frame: {eth=, arp=} or {eth=, ip=, icmp=} (the parts
--- that parse), for matching.
function net.parse(frame)
  local out = { eth = net.parse_ethernet(frame) }
  if not out.eth then return out end
  if out.eth.type == net.ETH_ARP then
    out.arp = net.parse_arp(out.eth.payload)
  elseif out.eth.type == net.ETH_IPV4 then
    out.ip = net.parse_ipv4(out.eth.payload)
    if out.ip and out.ip.proto == net.IP_ICMP then out.icmp = net.parse_icmp(out.ip.payload) end
  end
  return out
end

local function nanoseconds(d)
  if type(d) == "number" then return d end
  local n, unit = tostring(d):match("^(%d+)%s*(%a*)$")
  local scale = ({ [""] = 1, ns = 1, us = 1000, ms = 1000000, s = 1000000000 })[unit or ""]
  if not n or not scale then error("net: bad duration " .. tostring(d), 3) end
  return tonumber(n) * scale
end

--- A host at `host = {mac=MAC, ip=IP}` that answers the guest while it runs:
--- ARP requests for its IP and ICMP echo requests to it. Returns a function
--- for `hook.virtio{dev=..., fn=...}` (it drains the device's transmitted
--- frames; other frames are dropped) and a table counting what it answered:
--- `{arp=N, echo=N}`.
function net.responder(host, dev)
  dev = dev or "net"
  local answered = { arp = 0, echo = 0 }
  local function fn()
    local frame = virtio.recv(dev)
    while frame do
      local p = net.parse(frame)
      if p.arp and p.arp.op == net.ARP_REQUEST and p.arp.tpa == host.ip then
        virtio.send(dev, net.ethernet{
          dst = p.arp.sha, src = host.mac, type = net.ETH_ARP,
          payload = net.arp{ op = net.ARP_REPLY, sha = host.mac, spa = host.ip, tha = p.arp.sha, tpa = p.arp.spa },
        })
        answered.arp = answered.arp + 1
      elseif p.ip and p.icmp and p.ip.dst == host.ip and p.icmp.type == net.ICMP_ECHO_REQUEST then
        virtio.send(dev, net.ethernet{
          dst = p.eth.src, src = host.mac, type = net.ETH_IPV4,
          payload = net.ipv4{
            src = host.ip, dst = p.ip.src, proto = net.IP_ICMP, id = p.ip.id,
            payload = net.icmp_echo{
              type = net.ICMP_ECHO_REPLY, id = p.icmp.id, seq = p.icmp.seq, payload = p.icmp.payload,
            },
          },
        })
        answered.echo = answered.echo + 1
      end
      frame = virtio.recv(dev)
    end
  end
  return fn, answered
end

--- Runs the guest until it sends a frame for which `match(frame, parsed)`
--- (parsed = net.parse(frame)) is true, within `opts.timeout` of virtual time
--- (default "1s"); returns that frame, its parse and the frames skipped before
--- it. With `opts.arp = {mac=MAC, ip=IP}` an ARP request for that IP is
--- answered on the way (the host's side of a conversation). Errors on timeout
--- or when the guest stops, naming the frames seen. `dev` defaults to "net".
function net.wait_frame(match, opts)
  opts = opts or {}
  local dev = opts.dev or "net"
  local deadline = clock.now() + nanoseconds(opts.timeout or "1s")
  local skipped = {}
  -- Stop the run as soon as the guest notifies the transmit queue (1).
  local h = hook.virtio{ dev = dev, fn = function(ev) if ev.value == 1 then vm.stop() end end }
  local function finish(...) h:remove() return ... end
  while true do
    local frame = virtio.recv(dev)
    while frame do
      local p = net.parse(frame)
      if match(frame, p) then return finish(frame, p, skipped) end
      local a = opts.arp
      if a and p.arp and p.arp.op == net.ARP_REQUEST and p.arp.tpa == a.ip then
        virtio.send(dev, net.ethernet{
          dst = p.arp.sha, src = a.mac, type = net.ETH_ARP,
          payload = net.arp{ op = net.ARP_REPLY, sha = a.mac, spa = a.ip, tha = p.arp.sha, tpa = p.arp.spa },
        })
      end
      skipped[#skipped + 1] = frame
      frame = virtio.recv(dev)
    end
    local left = deadline - clock.now()
    if left <= 0 then
      h:remove()
      error(string.format("net.wait_frame: no matching frame within the timeout (%d frames skipped)",
        #skipped), 2)
    end
    local ev = vm.run{ time = left }
    if ev.reason ~= "hook" and ev.reason ~= "time_budget" then
      h:remove()
      error("net.wait_frame: the guest stopped (" .. ev.reason .. ") before sending a matching frame", 2)
    end
  end
end

return net

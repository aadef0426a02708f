-- The lunavm.net helper library: frames built and parsed in Lua, checksums.
-- No guest here; linux_test.lua uses it against the Linux kernel's network stack.
local net = require("lunavm.net")
local guest = require("lunavm.guest")

function test_addresses()
  t.eq(net.mac("02:4C:55:4e:41:01"), "\x02\x4c\x55\x4e\x41\x01")
  t.eq(net.mac_str("\x02\x4c\x55\x4e\x41\x01"), "02:4c:55:4e:41:01")
  t.eq(net.ip("10.0.2.15"), "\x0a\x00\x02\x0f")
  t.eq(net.ip_str("\xc0\xa8\x00\xff"), "192.168.0.255")
  t.match(guest.expect_error(net.mac, "02:00"), "not a MAC address: 02:00")
  t.match(guest.expect_error(net.ip, "10.0.2"), "not an IPv4 address: 10%.0%.2")
end

function test_checksum()
  -- RFC 1071's example: words 0001 f203 f4f5 f6f7 sum to ddf2 (complement 220d).
  t.eq(net.checksum("\x00\x01\xf2\x03\xf4\xf5\xf6\xf7"), 0x220d)
  -- An odd length is padded with a zero byte.
  t.eq(net.checksum("\x01"), 0xfeff)
  t.eq(net.checksum(""), 0xffff)
  -- A header from a real capture (20 bytes, checksum 0xb861) sums to zero.
  local hdr = "\x45\x00\x00\x73\x00\x00\x40\x00\x40\x11\xb8\x61\xc0\xa8\x00\x01\xc0\xa8\x00\xc7"
  t.eq(net.checksum(hdr), 0)
  t.eq(net.checksum(hdr:sub(1, 10) .. "\0\0" .. hdr:sub(13)), 0xb861)
end

function test_arp_round_trip()
  local mac, ip = net.mac("52:54:00:12:34:56"), net.ip("10.0.2.2")
  local frame = net.arp_request(mac, ip, net.ip("10.0.2.15"))
  t.eq(#frame, 42)
  local p = net.parse(frame)
  t.eq(p.eth.dst, net.BROADCAST)
  t.eq(p.eth.src, mac)
  t.eq(p.eth.type, net.ETH_ARP)
  t.eq(p.arp.op, net.ARP_REQUEST)
  t.eq(p.arp.sha, mac)
  t.eq(p.arp.spa, ip)
  t.eq(p.arp.tha, string.rep("\0", 6))
  t.eq(net.ip_str(p.arp.tpa), "10.0.2.15")
  t.eq(net.parse_arp("short"), nil)
  t.eq(net.parse_ethernet("short"), nil)
end

function test_ping_round_trip()
  local frame = net.ping_frame{src_mac = net.mac("52:54:00:12:34:56"), dst_mac = net.mac("02:4c:55:4e:41:01"),
    src_ip = net.ip("10.0.2.2"), dst_ip = net.ip("10.0.2.15"), id = 0x1234, seq = 9, ip_id = 7,
    payload = "abc"}
  t.eq(#frame, 14 + 20 + 8 + 3)
  local p = net.parse(frame)
  t.eq(p.eth.type, net.ETH_IPV4)
  t.eq(p.ip.version, 4)
  t.eq(p.ip.total_length, 31)
  t.eq(p.ip.id, 7)
  t.eq(p.ip.ttl, 64)
  t.eq(p.ip.proto, net.IP_ICMP)
  t.ok(p.ip.header_ok, "header checksum")
  t.eq(net.ip_str(p.ip.dst), "10.0.2.15")
  t.eq(p.icmp.type, net.ICMP_ECHO_REQUEST)
  t.eq(p.icmp.id, 0x1234)
  t.eq(p.icmp.seq, 9)
  t.eq(p.icmp.payload, "abc")
  t.ok(p.icmp.checksum_ok, "ICMP checksum")
  -- A flipped bit shows in both checksums.
  local bad = frame:sub(1, 14 + 8) .. "\x3f" .. frame:sub(14 + 10)
  t.ok(not net.parse(bad).ip.header_ok, "corrupt TTL")
  local bad_icmp = frame:sub(1, -2) .. "d"
  t.ok(not net.parse(bad_icmp).icmp.checksum_ok, "corrupt payload")
  -- Ethernet padding after the IP packet is not payload.
  t.eq(net.parse(frame .. string.rep("\0", 10)).icmp.payload, "abc")
end

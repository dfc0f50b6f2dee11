"""Synchronous load on a genq gateway: CONCURRENCY clients, each with one keep-alive connection,
send POST /generate one after another; prints requests/s and p50/p99 latency. Standard library
only. Usage: gateway_load.py PORT REQUESTS CONCURRENCY"""
import http.client, json, time, sys, concurrent.futures as cf
port = int(sys.argv[1]); n = int(sys.argv[2]); conc = int(sys.argv[3])
def worker(k):
    c = http.client.HTTPConnection('127.0.0.1', port)
    lat = []
    for i in range(n // conc):
        t = time.perf_counter()
        c.request('POST', '/generate', json.dumps({'text': f'hello number {k} {i}'}), {'Content-Type': 'application/json'})
        r = c.getresponse(); body = r.read()
        assert r.status == 200, (r.status, body)
        lat.append(time.perf_counter() - t)
    return lat
t0 = time.perf_counter()
with cf.ThreadPoolExecutor(conc) as ex:
    lats = sum(ex.map(worker, range(conc)), [])
el = time.perf_counter() - t0
lats.sort()
print(f'{len(lats)} requests, {len(lats)/el:.0f} req/s, p50 {lats[len(lats)//2]*1000:.1f} ms, p99 {lats[int(len(lats)*0.99)]*1000:.1f} ms')

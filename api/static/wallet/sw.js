// Keeps the wallet page's own files so the page (and its rotating QR, computed from the
// secret in localStorage) opens with no network. It never stores or answers an API request.
const SHELL = "circuit-wallet-v1";
const FILES = ["./", "index.html", "wallet.js", "wallet.css", "vendor/qrcode-generator.js", "/shop/vendor/jsQR.js"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((n) => n.startsWith("circuit-wallet-") && n !== SHELL).map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const shell = event.request.method === "GET" && url.origin === self.location.origin &&
    url.pathname.startsWith(new URL("./", self.location).pathname);
  if (!shell) return;  // API calls always go to the network
  // Network first (a new version shows at once); the kept copy when offline.
  event.respondWith(fetch(event.request).then((response) => {
    if (response.ok) {
      const copy = response.clone();
      caches.open(SHELL).then((cache) => cache.put(event.request, copy));
    }
    return response;
  }).catch(() => caches.match(event.request, { ignoreSearch: true }).then((hit) => hit || caches.match("index.html"))));
});

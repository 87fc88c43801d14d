// The service worker keeps the app's shell (its own files) so the app opens without a network.
// It never stores or answers an API request: a redemption is only ever what the server said.
const SHELL = "circuit-shop-v1";
const FILES = ["./", "index.html", "app.js", "app.css", "vendor/jsQR.js", "manifest.webmanifest", "icon.svg",
               "icon-192.png", "icon-512.png"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((n) => n !== SHELL).map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const shell = event.request.method === "GET" && url.origin === self.location.origin &&
    url.pathname.startsWith(new URL("./", self.location).pathname);
  if (!shell) return;  // API calls go to the network, always
  // Network first (a new version shows at once), the cached shell when offline.
  event.respondWith(fetch(event.request).then((response) => {
    if (response.ok) {
      const copy = response.clone();
      caches.open(SHELL).then((cache) => cache.put(event.request, copy));
    }
    return response;
  }).catch(() => caches.match(event.request).then((hit) => hit || caches.match("index.html"))));
});

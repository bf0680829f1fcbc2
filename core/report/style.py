"""The report's inline stylesheet: system fonts only (nothing fetched), readable on screen and on paper."""

CSS = """
:root { --fg: #1c2230; --muted: #5a6375; --line: #dde2ea; --soft: #f4f6f9; --accent: #2454a0;
        --ok: #1f7a3d; --run: #1f5fbf; --wait: #6b7280; --bad: #b42318; --warn: #a15c00; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--fg); background: #fff; font-size: 16px; line-height: 1.55;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 2.2rem 1.6rem 3rem; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 1rem; margin-bottom: 1.4rem; }
.kicker { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: .78rem; color: var(--accent);
          font-weight: 600; }
h1 { font-size: 2rem; line-height: 1.2; margin: .2rem 0 .3rem; overflow-wrap: anywhere; }
h2 { font-size: 1.45rem; line-height: 1.25; margin: 0 0 .6rem; display: flex; align-items: center; gap: .6rem;
     flex-wrap: wrap; }
h2 .num { color: var(--accent); font-variant-numeric: tabular-nums; min-width: 1.4em; }
h3 { font-size: 1.08rem; margin: 1.4rem 0 .5rem; }
.subtitle { margin: 0; color: var(--muted); overflow-wrap: anywhere; }
section { padding: 1.6rem 0 1.2rem; border-top: 1px solid var(--line); }
section#overview { border-top: none; }
.where { margin: -.3rem 0 .9rem; color: var(--muted); font-size: .88rem; overflow-wrap: anywhere; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: .8rem 1.2rem;
          margin-bottom: 1rem; }
nav.toc h2 { font-size: 1rem; margin: 0 0 .3rem; text-transform: uppercase; letter-spacing: .06em;
             color: var(--muted); }
nav.toc ol { margin: 0; padding-left: 1.5rem; columns: 2; column-gap: 2.5rem; }
nav.toc li { margin: .15rem 0; break-inside: avoid; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
p { margin: .5rem 0 .9rem; max-width: 75ch; }
.muted { color: var(--muted); font-size: .92rem; }
dl.facts { display: grid; grid-template-columns: minmax(11rem, max-content) 1fr; gap: .3rem 1.2rem;
           margin: .6rem 0 1.1rem; }
dl.facts > div { display: contents; }
dl.facts dt { color: var(--muted); font-weight: 500; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.chips { display: inline-flex; flex-wrap: wrap; gap: .3rem; vertical-align: middle; }
.chip { background: var(--soft); border: 1px solid var(--line); border-radius: 999px; padding: 0 .55rem;
        font-size: .86rem; }
.table-wrap { overflow-x: auto; margin: .6rem 0 1.1rem; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: .94rem; min-width: 50%; }
caption { caption-side: top; text-align: left; color: var(--muted); font-size: .88rem; padding-bottom: .35rem; }
th, td { padding: .38rem .75rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #b9c1cf; font-weight: 600; white-space: nowrap; }
tbody th { font-weight: 500; }
.num { text-align: right; white-space: nowrap; }
tr.knee { background: #fff1f0; }
tr.knee th, tr.knee td { font-weight: 600; }
tr.total th, tr.total td { border-top: 2px solid #b9c1cf; font-weight: 600; }
.knee-mark { font-size: .72rem; font-weight: 700; color: #fff; background: #c44e52; border-radius: 4px;
             padding: 0 .35rem; margin-left: .3rem; text-transform: uppercase; }
table.compare { min-width: 70%; }
table.compare td:last-child { font-weight: 600; }
.spread { color: var(--muted); font-size: .82rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: .8rem;
         margin: .4rem 0 1.2rem; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: .7rem .9rem; background: #fff; }
.card .label { color: var(--muted); font-size: .82rem; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 1.45rem; font-weight: 650; line-height: 1.25; overflow-wrap: anywhere; }
.card .sub { color: var(--muted); font-size: .86rem; }
.badge { display: inline-block; font-size: .74rem; font-weight: 600; letter-spacing: .03em; text-transform: uppercase;
         padding: .05rem .5rem; border-radius: 999px; border: 1px solid currentColor; color: var(--wait);
         vertical-align: middle; white-space: nowrap; line-height: 1.5; }
.badge-succeeded, .badge-done { color: var(--ok); }
.badge-running, .badge-cancelling { color: var(--run); }
.badge-failed { color: var(--bad); }
.badge-cancelled { color: var(--warn); }
.note { border-left: 4px solid var(--wait); background: var(--soft); padding: .6rem .9rem; margin: .6rem 0 1rem;
        border-radius: 0 6px 6px 0; overflow-wrap: anywhere; }
.note.pending { border-left-color: var(--run); background: #eef4fd; }
.note.warn { border-left-color: var(--warn); background: #fff7e8; }
.note.error { border-left-color: var(--bad); background: #fdeeee; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(430px, 1fr)); gap: 1.2rem 1.4rem;
        margin: 1rem 0; }
.figs.pairs { grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); }
.figs.single { grid-template-columns: minmax(0, 760px); justify-content: center; }
.ok { color: var(--ok); font-weight: 700; }
.bad { color: var(--bad); font-weight: 700; }
figure { margin: 0; break-inside: avoid; page-break-inside: avoid; }
figure.wide { grid-column: 1 / -1; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; border: 1px solid var(--line);
             border-radius: 6px; background: #fff; }
figcaption { color: var(--muted); font-size: .88rem; margin-top: .35rem; }
figcaption .file { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .78rem;
                   color: #8a93a3; margin-left: .3rem; }
footer { margin-top: 2rem; padding-top: 1rem; border-top: 1px solid var(--line); color: var(--muted);
         font-size: .85rem; }
@media (max-width: 720px) {
  main { padding: 1.2rem .9rem; }
  nav.toc ol { columns: 1; }
  .figs { grid-template-columns: 1fr; }
  dl.facts { grid-template-columns: 1fr; }
  dl.facts dd { margin-bottom: .4rem; }
}
@media print {
  @page { margin: 14mm 12mm; }
  body { font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  a { color: inherit; }
  nav.toc { break-after: page; }
  section { break-before: auto; }
  h2, h3, caption { break-after: avoid; page-break-after: avoid; }
  table, figure, .card, .note, dl.facts { break-inside: avoid; page-break-inside: avoid; }
  .table-wrap { overflow: visible; }
  .figs { display: block; }
  figure { margin: 0 0 1rem; }
  figure img { max-height: 120mm; width: auto; }
  .badge, .note, tr.knee, .knee-mark, .chip { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

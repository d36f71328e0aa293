// What the README and docs/ must be to a reader: examples written to run (the token set once, full
// URLs), an options table that renders and names every option the plugin takes, no internal references.
import { fileURLToPath } from 'node:url'
import t from 'tap'
import ts from 'typescript'
import { fencedBlocks, readDocsPages } from './fixtures/docs-pages.js'

const pages = await readDocsPages()

t.test('the token is set once, and every example uses $ADMIN_TOKEN and full URLs', async (t) => {
  const exports = pages.flatMap(({ path, text }) => [...text.matchAll(/export ADMIN_TOKEN=/g)].map(() => path))
  t.same(exports, ['README.md'], 'export ADMIN_TOKEN=... is shown once, in the README\'s quick start')
  for (const { path, text } of pages) {
    t.notMatch(text, /\$\{?TOKEN\b/, `${path}: no $TOKEN (the token is $ADMIN_TOKEN)`)
    t.notMatch(text, /(?<![\w.]):3000\//, `${path}: no :3000/... shorthand, which curl cannot read`)
    for (const example of fencedBlocks(text, ['sh', 'bash']).filter((code) => /\bcurl\b/.test(code))) {
      // One command a line once continuation lines are joined.
      const commands = example.replaceAll('\\\n', ' ').split('\n').filter((line) => /\bcurl\b/.test(line))
      for (const command of commands) t.match(command, /https?:\/\/127\.0\.0\.1:3000\//, `${path}: a curl command names its full URL: ${command.slice(0, 80)}`)
    }
  }
})

t.test('no internal references: the pages speak to a reader of the repository', async (t) => {
  const internal = [
    /\bthe seed\b/i, /\bseed's\b/i, /\bissues? \d+/i, /\bround (two|three|four|\d+)\b/i, /HOT-PATH-NOTES|DESIGN\.md|STYLE\.md/,
    /\bnotes file\b/i, /\bbrief\b/i, /\bengineers' tests\b/i, /\breview(er)?s?'?s? (shapes|attacks)\b/i
  ]
  for (const { path, text } of pages) {
    for (const pattern of internal) t.notMatch(text, pattern, `${path}: nothing matching ${String(pattern)}`)
  }
})

/**
 * The option names the plugin accepts, read from its own types (BudgetsOptions, and inside it every option
 * that is an object of options: gate, notifications, metrics), as dotted names. No list kept by hand.
 */
function acceptedOptions (): string[] {
  const file = fileURLToPath(new URL('../lib/options.ts', import.meta.url))
  const libFolder = fileURLToPath(new URL('../lib/', import.meta.url))
  const program = ts.createProgram([file], { strict: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022 })
  const checker = program.getTypeChecker()
  const source = program.getSourceFile(file)!
  const declaration = source.statements.find((statement): statement is ts.InterfaceDeclaration => ts.isInterfaceDeclaration(statement) && statement.name.text === 'BudgetsOptions')!
  const names: string[] = []
  const walk = (type: ts.Type, prefix: string): void => {
    for (const property of checker.getPropertiesOfType(type)) {
      const propertyType = checker.getNonNullableType(checker.getTypeOfSymbol(property))
      const name = `${prefix}${property.name}`
      // An object of options is one whose own properties are declared in lib/: not a function, a list,
      // a record of channels or prices (no named properties), a union such as `Sql | string`, or a primitive.
      const nested = !propertyType.isUnion() && propertyType.getCallSignatures().length === 0 && (propertyType.flags & ts.TypeFlags.Object) !== 0 &&
        checker.getPropertiesOfType(propertyType).length > 0 &&
        checker.getPropertiesOfType(propertyType).every((inner) => inner.declarations?.every((node) => node.getSourceFile().fileName.startsWith(libFolder)) === true)
      if (nested) walk(propertyType, `${name}.`)
      else names.push(name)
    }
  }
  walk(checker.getTypeAtLocation(declaration), '')
  return names.sort()
}

t.test('the options table renders, and names every option the plugin accepts', async (t) => {
  const options = pages.find(({ path }) => path === 'docs/options.md')
  t.ok(options, 'docs/options.md exists')
  const lines = options!.text.split('\n')
  const header = lines.findIndex((line) => /^\| option \|/.test(line))
  t.not(header, -1, 'it has a table headed "option"')
  // A markdown table ends at its first line that is not a row: a blank line inside would cut it in two.
  const end = lines.findIndex((line, index) => index > header && !line.startsWith('|'))
  const rows = lines.slice(header + 2, end === -1 ? lines.length : end)
  const afterTable = lines.slice(end === -1 ? lines.length : end).filter((line) => line.startsWith('| `'))
  t.same(afterTable, [], 'no row of options after the table ends (a blank line inside it)')
  const documented = rows.map((row) => /^\| `([^`]+)` \|/.exec(row)?.[1] ?? row).sort()
  const accepted = acceptedOptions()
  t.ok(accepted.includes('dashboard') && accepted.includes('metrics.topBudgets') && accepted.includes('gate.routes'), 'the names read from the code include the nested ones')
  t.same(documented, accepted, 'the table has one row per option the plugin accepts, no more')
})

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
function anchorOf (heading: string): string {
  return heading.trim().toLowerCase().replace(/[`*]/g, '').replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-')
}

t.test('every link between the pages reaches a page, and a heading on it when it names one', async (t) => {
  const byPath = new Map(pages.map((page) => [page.path, page]))
  const { existsSync } = await import('node:fs')
  for (const { path, text } of pages) {
    const prose = text.replace(/^```[\s\S]*?^```$/gm, '')
    for (const [, target] of prose.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/.test(target!)) continue // a web address
      const [file, anchor] = target!.split('#') as [string, string | undefined]
      const resolved = file === '' ? path : new URL(file, new URL(path, 'file:///repo/')).pathname.slice('/repo/'.length)
      t.ok(existsSync(fileURLToPath(new URL(`../${resolved}`, import.meta.url))), `${path}: the link ${target} reaches ${resolved}`)
      const page = byPath.get(resolved)
      if (anchor === undefined || page === undefined) continue
      const anchors = [...page.text.replace(/^```[\s\S]*?^```$/gm, '').matchAll(/^#+ (.+)$/gm)].map(([, heading]) => anchorOf(heading!))
      t.ok(anchors.includes(anchor), `${path}: the link ${target} names a heading of ${resolved}`)
    }
  }
})

t.test('the README links every page of docs/, so a reader can find each from it', async (t) => {
  const readme = pages.find(({ path }) => path === 'README.md')!.text
  for (const { path } of pages.filter(({ path }) => path.startsWith('docs/'))) t.ok(readme.includes(`](${path})`), `README.md links ${path}`)
})
